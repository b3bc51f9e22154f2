"""Deployment: BatchNorm folding, ONNX (checked with onnxruntime) and TorchScript export."""

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import trained_like
from synthetic import make_camvid_segnet, write_tiny_weights

from bisenet_pl.cli import main
from bisenet_pl.deploy import ExportOptions, export_onnx, fold_batchnorm, inference_network, onnx_session
from bisenet_pl.models import BiSeNetV1, BiSeNetV2
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "cls", [BiSeNetV2, functools.partial(BiSeNetV1, backbone="resnet50")], ids=["v2", "v1-resnet50"]
)
def test_folding_batchnorm_keeps_the_outputs(cls):
    net = trained_like(cls(num_classes=5))
    folded = inference_network(net)
    batchnorms = [name for name, m in folded.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # Only a BN that follows no convolution stays (BiSeNetV2's context block, on pooled features).
    assert batchnorms == (["semantic_branch.context_embedding.norm"] if isinstance(net, BiSeNetV2) else [])
    assert len(folded.aux_heads) == 0 and len(net.aux_heads) > 0  # a copy: the original keeps its heads
    images = torch.randn(2, 3, 72, 104)
    with torch.no_grad():
        ours, theirs = folded(images), net(images)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()  # float round-off only
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(cls(num_classes=5).train())


def test_onnx_logits_match_pytorch_at_any_batch_and_size(tmp_path):
    net = trained_like(BiSeNetV2(num_classes=5))
    path = export_onnx(net, tmp_path / "v2.onnx", ExportOptions(example_size=(64, 96)))
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["images"] and [o.name for o in session.get_outputs()] == [
        "logits"
    ]
    for shape in [(1, 3, 64, 96), (2, 3, 97, 131), (1, 3, 360, 480)]:  # dynamic batch, height and width
        images = torch.randn(*shape)
        (logits,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = net(images).numpy()
        assert logits.shape == expected.shape
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob("*.data"))  # one file, nothing half-written


@pytest.fixture
def checkpoint(tmp_path):
    module = SegmentationModule(net=functools.partial(BiSeNetV1, aux_heads=["context16"]), num_classes=4)
    trained_like(module.net)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    return tmp_path / "model.ckpt", module.net.eval()


def test_export_command_onnx_with_argmax(checkpoint, capsys):
    path, net = checkpoint
    main(["export", f"--ckpt_path={path}", "--labels=int32", "--size", "64", "96"])
    output = capsys.readouterr().out
    assert f"wrote {path.with_suffix('.onnx')}" in output and "onnxruntime agrees with PyTorch" in output
    session = onnx_session(path.with_suffix(".onnx"))
    images = torch.randn(2, 3, 80, 112)
    (labels,) = session.run(None, {"images": images.numpy()})
    assert labels.dtype == np.int32 and labels.shape == (2, 80, 112)
    with torch.no_grad():
        expected = net(images).argmax(dim=1).numpy()
    assert (labels == expected).mean() > 0.999  # ties of float round-off aside, the same classes


def test_export_command_torchscript_from_one_read_of_its_input(checkpoint, tmp_path, monkeypatch):
    path, net = checkpoint
    reads, load = [], torch.load
    monkeypatch.setattr(
        torch, "load", lambda file, *args, **kwargs: reads.append(str(file)) or load(file, *args, **kwargs)
    )
    main(
        [
            "export",
            f"--ckpt_path={path}",
            "--format=torchscript",
            f"--output={tmp_path / 'net.pt'}",
            "--size",
            "64",
            "96",
        ]
    )
    assert reads == [str(path)]  # checked, described and loaded from one read (it may be a download)
    scripted = torch.jit.load(str(tmp_path / "net.pt"))
    images = torch.randn(3, 3, 96, 128)  # another batch and size than traced
    with torch.no_grad():
        torch.testing.assert_close(scripted(images), net(images), rtol=1e-4, atol=1e-4)


def test_export_command_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="no such checkpoint"):
        main(["export", f"--ckpt_path={tmp_path / 'missing.ckpt'}"])


def test_an_export_never_overwrites_its_input_nor_a_file_nobody_named(tmp_path, monkeypatch):
    released = write_tiny_weights(tmp_path / "bisenetv2_camvid.pt")  # named as the released file, exported in seconds
    before = released.read_bytes()
    monkeypatch.chdir(tmp_path)
    # The default output of --format weights for a .pt input is the input itself.
    with pytest.raises(SystemExit, match="--output bisenetv2_camvid.pt would overwrite the input bisenetv2_camvid.pt"):
        main(["export", "--model.pretrained=bisenetv2_camvid.pt", "--format=weights", "--bn_images=2"])
    with pytest.raises(SystemExit, match="would overwrite the input"):
        main(["export", f"--model.pretrained={released}", "--format=weights", f"--output={released}"])
    assert released.read_bytes() == before
    (tmp_path / "bisenetv2_camvid.onnx").write_text("mine")
    with pytest.raises(
        SystemExit, match="bisenetv2_camvid.onnx exists already: give --output bisenetv2_camvid.onnx to replace it"
    ):
        main(["export", "--model.pretrained=bisenetv2_camvid.pt", "--size", "64", "96"])
    assert (tmp_path / "bisenetv2_camvid.onnx").read_text() == "mine"
    main(
        ["export", "--model.pretrained=bisenetv2_camvid.pt", "--size", "64", "96", "--output=bisenetv2_camvid.onnx"]
    )  # named: replaced
    assert (tmp_path / "bisenetv2_camvid.onnx").stat().st_size > 1000


INTERRUPTED_EXPORT = """
import os, signal, sys, tempfile, time
from pathlib import Path
from bisenet_pl import deploy
from bisenet_pl.cli import main

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job inherits it ignored)

folder, number = Path(sys.argv[1]), int(sys.argv[2])

def interrupted_export(*args, **kwargs):
    with tempfile.TemporaryDirectory(prefix=".bisenet-export-", dir=folder):
        os.kill(os.getpid(), number)  # as Ctrl-C or a kill would, while exporting
        time.sleep(5)

deploy.export = interrupted_export
main(["export", "--model.pretrained=bisenetv2_camvid", "--size", "64", "96", f"--output={folder / 'x.onnx'}"])
"""


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_export_ends_in_one_line_and_leaves_no_temporary_folder(tmp_path, signal_number):
    # In a process of its own, as a user's Ctrl-C reaches one (a signal sent to the test process itself
    # once crashed it: see test_openvino_predictors_freed_in_any_order_leave_the_process_able_to_handle_signals).
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_EXPORT, str(tmp_path), str(int(signal_number))],
        capture_output=True, text=True, timeout=300, env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "bisenet-pl: interrupted; no output was left half-written" in result.stderr
    assert list(tmp_path.iterdir()) == []


INTERRUPTED_CHECK = """
import os, signal, sys, time
from pathlib import Path
from bisenet_pl import deploy
from bisenet_pl.cli.main import command

signal.signal(signal.SIGINT, signal.default_int_handler)
folder = Path(sys.argv[1])

def interrupted_check(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the written file is being checked
    time.sleep(5)

deploy.compare_with_pytorch = interrupted_check
sys.argv = ["bisenet-pl", "export", f"--model.pretrained={sys.argv[2]}", "--size", "64", "96",
            f"--output={folder / 'new' / 'x.onnx'}"]
command()
"""


def test_an_export_interrupted_while_checking_its_file_says_the_file_is_whole(tmp_path):
    # The program (command, not main) ends such an interrupt without the interpreter's teardown.
    weights = write_tiny_weights(tmp_path / "weights" / "tiny.pt")  # exported in seconds
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_CHECK, str(tmp_path), str(weights)],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(__file__).parent)},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    written = tmp_path / "new" / "x.onnx"  # --output's folder made, as the run folders of fit are
    assert f"bisenet-pl: interrupted after {written} was written whole, before it was checked" in result.stderr
    assert sorted(p.name for p in written.parent.iterdir()) == ["x.onnx"]


def test_a_checkpoint_of_the_cpu_recipe_exports(tmp_path, capsys):
    """channels-last and bf16-mixed, as configs/camvid_cpu.yaml trains, once failed in torch.export
    ("Constraints violated (batch, height, width)"); every checkpoint the CLI trains must export."""
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1})
    out = tmp_path / "out"
    main([
        "fit", "--config", str(REPO / "configs" / "camvid_cpu.yaml"), f"--data.root={camvid}",
        "--trainer.precision=bf16-mixed",
        "--model.channels_last=true", "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--data.batch_size=2",
        "--data.crop_size=[32,48]", "--progress_bar.refresh_rate=0", "--last_checkpoint.every_n_train_steps=1",
        f"--trainer.default_root_dir={out}",
    ])  # fmt: skip
    checkpoint = next(out.rglob("last.ckpt"))
    main(["export", f"--ckpt_path={checkpoint}", "--size", "64", "96"])
    assert "onnxruntime agrees with PyTorch" in capsys.readouterr().out


def test_a_channels_last_network_exports_to_onnx(tmp_path):
    """The export's copy returns to the default memory format: channels-last weights made
    torch.export's dynamic batch, height and width fail its shape guards."""
    net = trained_like(BiSeNetV2(num_classes=5)).to(memory_format=torch.channels_last)
    session = onnx_session(export_onnx(net, tmp_path / "cl.onnx", ExportOptions(example_size=(64, 96))))
    images = torch.randn(2, 3, 80, 112)
    (logits,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, net(images).numpy(), rtol=1e-4, atol=1e-4)
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).weight  # 3x3: the formats differ
    assert not first.is_contiguous() and first.is_contiguous(
        memory_format=torch.channels_last
    )  # the caller's net is untouched


FORKED_WHILE_A_TOOL_RUNS = """
import ctypes, importlib, multiprocessing, time
cli = importlib.import_module("bisenet_pl.cli.main")

def stuck():
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: an unlocked default mutex
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # blocked in C for good, as on a lock inherited locked

def tool(args):
    child = multiprocessing.get_context("fork").Process(target=stuck, daemon=True)
    child.start()
    time.sleep(0.5)
    child.terminate()  # as OpenVINO's telemetry ends its sender after 3 s
    child.join(5)
    print("exit code", child.exitcode)
    if child.is_alive():
        child.kill()

cli.TOOLS["stats"] = tool
cli.main(["stats"])
"""


def test_a_child_forked_while_a_tool_runs_ends_on_sigterm_even_when_blocked_in_c():
    # The tool's SIGTERM handler is Python, which such a child never runs: it must not inherit it (one of
    # OpenVINO's telemetry senders outlived an export, holding its stdout open).
    result = subprocess.run(
        [sys.executable, "-c", FORKED_WHILE_A_TOOL_RUNS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"exit code {-signal.SIGTERM}" in result.stdout  # was "exit code None": still running after terminate()
