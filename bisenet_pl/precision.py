"""``trainer.precision: auto`` on a CPU: time the run's own step in each precision and keep the fastest.

Instruction flags do not say what is fastest: bf16 autocast was 1.8x faster than float32 on an AMD
Zen 5 with AVX512_BF16 and no faster on an Intel Xeon with the same flag. So ``auto`` measures a few
training steps of the actual network, batch and crop (a forward pass at the evaluation batch for
validate/test/predict), in float32 and bf16, in alternating order, and remembers the answer per CPU,
torch version, thread count, network, shape and version of this package's code in a small JSON cache, so
that it is measured once.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bisenet_pl.allocator import freed_memory_kept, keep_freed_memory
from bisenet_pl.hardware import cpu_features

CPU_CANDIDATES = ("32-true", "bf16-mixed")
#: bf16 changes the numerics; it must beat float32 by this share to be chosen over it.
LOWER_PRECISION_MARGIN = 0.10
#: Seconds the measurement may take, at most (about; a step that is under way is finished).
MEASUREMENT_BUDGET_S = 20.0
#: Timed steps per candidate wanted within the budget (at least 2 each are taken in any case).
TIMED_STEPS = 3
#: Share of a time budget (``--train_minutes``) kept for validation, data, the optimiser and checkpoints.
TIME_RESERVE = 0.2


def cache_path() -> Path:
    """``$BISENET_PL_CACHE`` or ``$XDG_CACHE_HOME/bisenet-pl`` (``~/.cache/bisenet-pl``), ``precision.json``."""
    folder = (
        os.environ.get("BISENET_PL_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bisenet-pl"
    )
    return Path(folder) / "precision.json"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    step_ms: dict[str, float]  # median milliseconds per step, per candidate (the first: float32)
    what: str  # the step that was timed, e.g. "a training step of BiSeNetV2 (8 x 192x256)"
    cached: bool = False
    setting: str = "trainer.precision=auto"

    def describe(self) -> str:
        reference, *_ = self.step_ms.values()
        times = ", ".join(
            f"{name} {ms:.0f} ms" + (f" ({reference / ms:.2f}x)" if index else "")
            for index, (name, ms) in enumerate(self.step_ms.items())
        )
        source = "measured earlier on this machine" if self.cached else "measured now"
        return f"{self.setting}: {self.precision}, the fastest for {self.what} ({source}: {times})"


def choose_fastest(step_ms: dict[str, float], margin: float = LOWER_PRECISION_MARGIN) -> str:
    """The first candidate (float32), unless another takes at least ``margin`` less time per step;
    then the fastest."""
    reference = next(iter(step_ms))
    fastest = min(step_ms, key=step_ms.__getitem__)
    if step_ms[fastest] > (1 - margin) * step_ms[reference]:
        return reference
    return fastest


def time_alternately(
    steps: dict[str, Callable[[], object]],
    budget_s: float = MEASUREMENT_BUDGET_S,
    timed_steps: int = TIMED_STEPS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of each step function, after one untimed call each (first-call set-up), called in
    turn so that a drift of a shared machine affects all alike; stops after ``timed_steps`` each or
    when ``budget_s`` has passed (but never before two timed calls each)."""
    start = clock()
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    while True:
        for name, step in steps.items():
            begin = clock()
            step()
            times[name].append(clock() - begin)
        done = min(len(t) for t in times.values())
        if done >= timed_steps or (done >= 2 and clock() - start > budget_s):
            return {name: statistics.median(t) for name, t in times.items()}


def _step_function(module, precision: str, batch: int, size: tuple[int, int], train: bool) -> Callable[[], None]:
    """One step of a copy of ``module``'s network in ``precision`` on random data: forward, the loss of
    every head, backward and the module's optimiser (learning rate 0) when ``train``, else a forward
    pass without gradients."""
    net = copy.deepcopy(module.net).train(train)
    channels_last = bool(module.hparams.get("channels_last"))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, *size, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    masks = torch.randint(0, module.num_classes, (batch, *size), generator=generator)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else None
    adamw = module.optimizer_options.name == "adamw"
    optimizer = (
        torch.optim.AdamW(net.parameters(), lr=0.0)
        if adamw
        else torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    )

    def step() -> None:
        with (
            torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
            torch.set_grad_enabled(train),
        ):
            outputs = net(images)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            if train:
                loss = sum(module.criterion(logits, masks) for logits in outputs)
        if train:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


@functools.cache
def code_digest() -> str:
    """A digest of this package's source: a step measured by other code (a faster loss, another
    layer) is measured again rather than read from the cache."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:10]


def measurement_key(module, batch: int, size: tuple[int, int], train: bool) -> str:
    spec = json.dumps(module.hparams.get("net"), sort_keys=True, default=str)
    parts = [
        this_cpu(), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads", type(module.net).__name__,
        hashlib.sha1(spec.encode()).hexdigest()[:10], f"{'train' if train else 'eval'} {batch}x{size[0]}x{size[1]}",
        "channels-last" if module.hparams.get("channels_last") else "nchw", f"{module.optimizer_options.name} step",
        f"code {code_digest()}", "freed memory kept" if freed_memory_kept() else "system allocator",
    ]  # fmt: skip
    return " | ".join(parts)


def measured_step_ms(
    key: str,
    steps: Callable[[], dict[str, Callable[[], object]]],
    candidates: tuple[str, ...],
    measure: Callable[[dict[str, Callable[[], object]]], dict[str, float]] | None = None,
    cache: Path | None = None,
) -> tuple[dict[str, float], bool]:
    """Milliseconds per step of each candidate, and whether they come from the cache: read under
    ``key`` when measured before, else measured now (``measure``, by default :func:`time_alternately`,
    of the step functions ``steps()`` builds) and added to the cache."""
    cache = cache_path() if cache is None else cache
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key) if isinstance(known.get(key), dict) else {}
    if set(candidates) <= set(entry):
        return {name: float(entry[name]) for name in candidates}, True
    seconds = (measure or time_alternately)(steps())
    step_ms = {name: 1000 * seconds[name] for name in candidates}
    known[key] = entry | step_ms
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, indent=1))
        os.replace(temporary, cache)
    except OSError:
        pass  # a read-only home: measured again next time
    return step_ms, False


def this_cpu() -> str:
    """The CPU as a cache key: its name and a digest of its flags (one name covers several generations)."""
    features = cpu_features()
    return f"{features.name} [{hashlib.sha1(' '.join(sorted(features.flags)).encode()).hexdigest()[:10]}]"


def fastest_cpu_precision(
    module,
    batch: int,
    size: tuple[int, int],
    train: bool = True,
    candidates: tuple[str, ...] = CPU_CANDIDATES,
    measure: Callable[[dict[str, Callable[[], object]]], dict[str, float]] | None = None,
    cache: Path | None = None,
) -> PrecisionChoice:
    """The fastest of ``candidates`` for ``module``'s network at this batch and size on this CPU,
    from the cache when it was measured before, else measured now and cached."""
    keep_freed_memory()  # timed with the memory setting the Trainer trains with
    step = "a training step" if train else "a forward pass"
    what = f"{step} of {type(module.net).__name__} ({batch} x {size[0]}x{size[1]})"
    # Measuring trains a copy of the network, whose dropout draws from the global RNG: forked, so that a
    # run's random stream (and so its result) never depends on whether the answer was cached.
    with torch.random.fork_rng(devices=[]):
        step_ms, cached = measured_step_ms(
            measurement_key(module, batch, size, train),
            lambda: {name: _step_function(module, name, batch, size, train) for name in candidates},
            candidates, measure, cache,
        )  # fmt: skip
    return PrecisionChoice(choose_fastest(step_ms), step_ms, what, cached)


def steps_within(minutes: float, step_ms: float, reserve: float = TIME_RESERVE) -> int:
    """Training steps of ``step_ms`` each that fit in ``minutes``, ``reserve`` of the time kept aside."""
    return max(1, int(minutes * 60_000 * (1 - reserve) / step_ms))
