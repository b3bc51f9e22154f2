"""``trainer.precision: auto`` and ``model.channels_last: auto`` on a CPU: time the run's own step in
each candidate and keep the fastest.

Instruction flags do not say what is fastest: bf16 autocast was 1.8x faster than float32 on an AMD
Zen 5 with AVX512_BF16, no faster on an Intel Xeon with the same flag and ten times slower on an AVX2-only
AMD Zen 3, where channels-last was also 1.1x slower than NCHW (it was faster on the Zen 5). So ``auto``
first runs a forward pass of each candidate (precision, and memory format where that is ``auto`` too) and
drops those more than twice as slow as the fastest, then times a few training steps of the actual
network, batch and crop (a forward pass at the evaluation batch for validate/test/predict) of the rest, in
alternating order, and remembers the answer per CPU, torch version, thread count, network, shape and
version of this package's code in a small JSON cache, so that it is measured once. A measurement during
which other processes (or, on a VM, the hypervisor) took a tenth of the CPUs or more is used for the run
but not remembered: every later run on the machine would otherwise read its slowed times (``--train_minutes``
sizes schedules from them).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bisenet_pl.allocator import freed_memory_kept, keep_freed_memory
from bisenet_pl.hardware import OtherLoad, cpu_features

#: How candidates are timed: their step functions by name in, seconds per step by name out
#: (:func:`time_alternately`, or a stand-in in tests).
Measure = Callable[[dict[str, Callable[[], object]]], dict[str, float]]

CPU_CANDIDATES = ("32-true", "bf16-mixed")
#: bf16 changes the numerics; it must beat float32 by this share to be chosen over it.
LOWER_PRECISION_MARGIN = 0.10
#: Seconds the measurement may take, at most (about; a step that is under way is finished).
MEASUREMENT_BUDGET_S = 20.0
#: Timed steps per candidate wanted within the budget (at least 2 each are taken in any case).
TIMED_STEPS = 3
#: A candidate whose forward pass takes more than this many times the fastest's is not timed further
#: (bf16 without native bf16 instructions: one training step of it took 24 s where float32's took 2.5).
PROBE_SLOWER = 2.0
#: A measurement during which other processes took at least this share of the CPUs is not cached.
BUSY_SHARE = 0.10


def cache_path() -> Path:
    """``$BISENET_PL_CACHE`` or ``$XDG_CACHE_HOME/bisenet-pl`` (``~/.cache/bisenet-pl``), ``precision.json``."""
    folder = (
        os.environ.get("BISENET_PL_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bisenet-pl"
    )
    return Path(folder) / "precision.json"


def candidate_name(precision: str, channels_last: bool) -> str:
    """A training candidate's name: its precision and memory format, e.g. ``32-true NCHW``."""
    return f"{precision} {'channels-last' if channels_last else 'NCHW'}"


def parse_candidate(name: str) -> tuple[str, bool]:
    """The precision and whether channels-last, of a name :func:`candidate_name` made."""
    precision, memory_format = name.split(" ")
    return precision, memory_format == "channels-last"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    step_ms: dict[str, float]  # median milliseconds per step, per candidate (the first: the reference)
    what: str  # the step that was timed, e.g. "a training step of BiSeNetV2 (8 x 192x256)"
    cached: bool = False
    setting: str = "trainer.precision=auto"
    channels_last: bool | None = None  # a training choice's memory format
    busy_share: float | None = None  # the CPUs' share other processes took while it was measured (OtherLoad)

    @property
    def chosen(self) -> str:
        """The chosen candidate's name (its precision, with its memory format for a training choice)."""
        return self.precision if self.channels_last is None else candidate_name(self.precision, self.channels_last)

    def describe(self) -> str:
        reference = next(iter(self.step_ms.values()))
        timed = [(name, ms) for name, ms in self.step_ms.items() if math.isfinite(ms)]
        times = ", ".join(
            f"{name} {ms:.0f} ms" + (f" ({reference / ms:.2f}x)" if index and math.isfinite(reference) else "")
            for index, (name, ms) in enumerate(timed)
        )
        dropped = [name for name, ms in self.step_ms.items() if not math.isfinite(ms)]
        if dropped:
            times += f"; not timed, a forward pass over {PROBE_SLOWER:g}x the fastest's: {', '.join(dropped)}"
        source = "measured earlier on this machine" if self.cached else "measured now"
        if too_busy(self.busy_share):
            source += f" while other processes took {self.busy_share:.0%} of the CPUs, so not remembered"
        return f"{self.setting}: {self.chosen}, the fastest for {self.what} ({source}: {times})"


def choose_fastest(
    step_ms: dict[str, float], margin: float = LOWER_PRECISION_MARGIN, exact: Callable[[str], bool] | None = None
) -> str:
    """The fastest candidate if it computes exactly (``exact``: by default only the first candidate does),
    else the fastest exact one unless the fastest takes at least ``margin`` less time per step."""
    first = next(iter(step_ms))
    exact = exact or (lambda name: name == first)
    fastest = min(step_ms, key=step_ms.__getitem__)
    fastest_exact = min((name for name in step_ms if exact(name)), key=step_ms.__getitem__, default=fastest)
    if exact(fastest) or step_ms[fastest] <= (1 - margin) * step_ms[fastest_exact]:
        return fastest
    return fastest_exact


def time_alternately(
    steps: dict[str, Callable[[], object]],
    budget_s: float = MEASUREMENT_BUDGET_S,
    timed_steps: int = TIMED_STEPS,
    clock: Callable[[], float] = time.perf_counter,
    probes: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Median seconds of each step function, after one untimed call each (first-call set-up), called in
    turn so that a drift of a shared machine affects all alike; stops after ``timed_steps`` each or
    when ``budget_s`` has passed (but never before two timed calls each). With ``probes`` (a cheaper call
    per candidate, e.g. a forward pass), those are run first, twice each, and a candidate whose second
    probe takes over :data:`PROBE_SLOWER` times the fastest's is not timed: its seconds are ``inf``."""
    start = clock()
    slow: set[str] = set()
    if probes:
        seconds = {}
        for _ in range(2):  # the first round pays each candidate's set-up; the second is compared
            for name, probe in probes.items():
                begin = clock()
                probe()
                seconds[name] = clock() - begin
        slow = {name for name, s in seconds.items() if s > PROBE_SLOWER * min(seconds.values())}
    timed = {name: step for name, step in steps.items() if name not in slow}
    for step in timed.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in timed}
    while True:
        for name, step in timed.items():
            begin = clock()
            step()
            times[name].append(clock() - begin)
        done = min(len(t) for t in times.values())
        if done >= timed_steps or (done >= 2 and clock() - start > budget_s):
            return {name: statistics.median(times[name]) if name in times else math.inf for name in steps}


class CandidateStep:
    """One step of a copy of ``module``'s network in a candidate (precision and memory format, see
    :func:`candidate_name`) on random data: forward, the loss of every head, backward and the module's
    optimiser (learning rate 0) when ``train``, else a forward pass without gradients. :meth:`probe` is a
    forward pass of two of the images, to drop a far slower candidate before timing its step."""

    def __init__(self, module, candidate: str, batch: int, size: tuple[int, int], train: bool) -> None:
        precision, channels_last = parse_candidate(candidate)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = copy.deepcopy(module.net).train(train).to(memory_format=memory_format)
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, *size, generator=generator).contiguous(memory_format=memory_format)
        self.masks = torch.randint(0, module.num_classes, (batch, *size), generator=generator)
        self.dtype = torch.bfloat16 if precision == "bf16-mixed" else None
        self.criterion, self.train = module.criterion, train
        parameters = self.net.parameters()
        self.optimizer = (
            torch.optim.AdamW(parameters, lr=0.0)
            if module.optimizer_options.name == "adamw"
            else torch.optim.SGD(parameters, lr=0.0, momentum=0.9)
        )

    def autocast(self):
        return torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def __call__(self) -> None:
        with self.autocast(), torch.set_grad_enabled(self.train):
            outputs = self.net(self.images)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            if self.train:
                loss = sum(self.criterion(logits, self.masks) for logits in outputs)
        if self.train:
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def probe(self) -> None:
        with self.autocast(), torch.no_grad():
            self.net(self.images[:2])


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
        f"{module.optimizer_options.name} step",
        f"code {code_digest()}", "freed memory kept" if freed_memory_kept() else "system allocator",
    ]  # fmt: skip
    return " | ".join(parts)


def too_busy(share: float | None) -> bool:
    """Whether other processes took so much of the CPUs (``OtherLoad.share``) that timings are not kept."""
    return share is not None and share >= BUSY_SHARE


def measured_step_ms(
    key: str,
    steps: Callable[[], dict[str, Callable[[], object]]],
    candidates: tuple[str, ...],
    measure: Measure | None = None,
    cache: Path | None = None,
) -> tuple[dict[str, float], bool, float | None]:
    """Milliseconds per step of each candidate, whether they come from the cache, and the share of the CPUs
    other processes took while they were measured: read under ``key`` when measured before, else measured now
    (``measure``, by default :func:`time_alternately`, of the step functions ``steps()`` builds) and added to
    the cache unless that share was :data:`BUSY_SHARE` or more."""
    cache = cache_path() if cache is None else cache
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key) if isinstance(known.get(key), dict) else {}
    if set(candidates) <= set(entry):
        return {name: float(entry[name]) for name in candidates}, True, None
    step_functions = steps()  # built outside the timed block: setting up is not measured
    with OtherLoad() as load:
        seconds = (measure or time_alternately)(step_functions)
    step_ms = {name: 1000 * seconds[name] for name in candidates}
    if too_busy(load.share):
        return step_ms, False, load.share
    known[key] = entry | step_ms
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known, indent=1))
        os.replace(temporary, cache)
    except OSError:
        pass  # a read-only home: measured again next time
    return step_ms, False, load.share


def this_cpu() -> str:
    """The CPU as a cache key: its name and a digest of its flags (one name covers several generations)."""
    features = cpu_features()
    return f"{features.name} [{hashlib.sha1(' '.join(sorted(features.flags)).encode()).hexdigest()[:10]}]"


def memory_formats(module) -> tuple[bool, ...]:
    """Whether channels-last, for each memory format to measure: both where ``model.channels_last`` is
    ``auto``, else the one it sets."""
    setting = module.hparams.get("channels_last")
    return (False, True) if setting == "auto" else (bool(setting),)


def fastest_cpu_precision(
    module,
    batch: int,
    size: tuple[int, int],
    train: bool = True,
    candidates: tuple[str, ...] = CPU_CANDIDATES,
    measure: Measure | None = None,
    cache: Path | None = None,
) -> PrecisionChoice:
    """The fastest of the precisions ``candidates``, in each memory format :func:`memory_formats` gives,
    for ``module``'s network at this batch and size on this CPU, from the cache when it was measured
    before, else measured now and cached. float32 in either format counts as exact; bf16 must be
    :data:`LOWER_PRECISION_MARGIN` faster than the faster of them."""
    keep_freed_memory()  # timed with the memory setting the Trainer trains with
    step = "a training step" if train else "a forward pass"
    what = f"{step} of {type(module.net).__name__} ({batch} x {size[0]}x{size[1]})"
    names = tuple(candidate_name(precision, last) for precision in candidates for last in memory_formats(module))

    def probed(steps: dict[str, CandidateStep]) -> dict[str, float]:
        return time_alternately(steps, probes={name: step.probe for name, step in steps.items()})

    # Measuring trains a copy of the network, whose dropout draws from the global RNG: forked, so that a
    # run's random stream (and so its result) never depends on whether the answer was cached.
    with torch.random.fork_rng(devices=[]):
        step_ms, cached, busy_share = measured_step_ms(
            measurement_key(module, batch, size, train),
            lambda: {name: CandidateStep(module, name, batch, size, train) for name in names},
            names, measure or probed, cache,
        )  # fmt: skip
    chosen = choose_fastest(step_ms, exact=lambda name: parse_candidate(name)[0] == candidates[0])
    precision, channels_last = parse_candidate(chosen)
    return PrecisionChoice(precision, step_ms, what, cached, channels_last=channels_last, busy_share=busy_share)
