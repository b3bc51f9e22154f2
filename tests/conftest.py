import importlib.util
import math
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Nothing in the tests may wait on a network.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="bisenet-pl-test-hub-cache-")
# precision=auto measures once per shape: in the tests, into a cache of their own.
os.environ["BISENET_PL_CACHE"] = tempfile.mkdtemp(prefix="bisenet-pl-test-cache-")
# pytest-xdist's workers (make test runs one per core) share the cores: compute threads split between them,
# not each worker's threads on every core. The processes a test starts get the same count (OMP_NUM_THREADS),
# so that a run in a process of its own computes as one in the test's process.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

SHARED = Path(os.environ.get("BISENET_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
REFERENCE_DIR = SHARED / "reference" / "coincheung"
CAMVID_DIR = SHARED / "camvid"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package), its folder on the import
    path as when Python runs it (speed.py imports its parts from beside it)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_state_dict(keys_tsv: Path) -> dict[str, torch.Tensor]:
    """Deterministic weights in the reference key layout, by the rule of the reference README."""
    state = {}
    for index, line in enumerate(keys_tsv.read_text().splitlines()[1:]):
        key, shape_text, _ = line.split("\t")
        shape = tuple(int(s) for s in shape_text.strip("()").split(",") if s.strip())
        g = torch.Generator().manual_seed(index)
        if key.endswith("num_batches_tracked"):
            value = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            value = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            value = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1 and key.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and key.endswith("bias"):
            value = 0.1 * torch.randn(shape, generator=g)
        else:
            value = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        state[key] = value
    return state


def eval_normalisation(model: torch.nn.Module) -> torch.nn.Module:
    """Training mode (aux heads on) with BatchNorm and Dropout in eval mode, as the reference outputs were made."""
    model.train()
    for module in model.modules():
        if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
            module.eval()
    return model


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference outputs not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


def trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
            module.weight.data.copy_(1 + 0.1 * torch.randn(module.num_features, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(module.num_features, generator=generator))
    return net.eval()


@pytest.fixture(scope="session")
def camvid(tmp_path_factory) -> Path:
    """A tiny CamVid in the SegNet layout, shared: 3 training images (sequence 0006R0 among them, the
    dev split's), 2 val, 2 test."""
    from synthetic import make_camvid_segnet

    counts = {"train": 3, "val": 2, "test": 2}
    return make_camvid_segnet(tmp_path_factory.mktemp("camvid") / "camvid", counts, sequences=("0001TP", "0006R0"))
