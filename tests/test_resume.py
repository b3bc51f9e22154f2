"""A run killed mid-epoch and resumed with --ckpt_path last ends exactly as an uninterrupted one."""

import errno
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from synthetic import make_camvid_segnet
from torch.utils.data import TensorDataset

from bisenet_pl.cli import build_cli
from bisenet_pl.data.resume import resumable_train_loader
from bisenet_pl.deploy import cpu_features
from bisenet_pl.trainer import AtomicCheckpointIO, Trainer

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("bisenet-pl")


def fit_args(root: Path, out: Path, precision: str, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}",
        "--trainer.accelerator=cpu", f"--trainer.precision={precision}", "--data.batch_size=2", "--data.num_workers=1",
        "--data.crop_size=[32,48]", "--data.val_batch_size=1", "--progress_bar.refresh_rate=0",
        # 4 steps per epoch; last.ckpt every 3 steps; validation every 3 steps.
        "--trainer.max_steps=9", "--trainer.val_check_interval=3", "--last_checkpoint.every_n_train_steps=3",
        "--model.optimizer.warmup_steps=2", f"--trainer.default_root_dir={out}",
        *extra,
    ]  # fmt: skip


def fit_in_a_process(*args) -> subprocess.CompletedProcess:
    """As a user runs it: a process of its own, which the kill callback ends."""
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([str(SCRIPT), *fit_args(*args)], capture_output=True, text=True, env=env, timeout=300)


def newest_last(out: Path) -> dict:
    path = max(out.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return torch.load(path, map_location="cpu", weights_only=True)


# Mixed precision on the CPU is bf16 (Lightning turns 16-mixed into bf16-mixed there and keeps no
# GradScaler; on GPUs it saves the scaler's state in the checkpoint).
# bf16 where the CPU has no bf16 instructions is emulated (about 10x slower): left to make test-all there.
EMULATED_BF16 = () if cpu_features().native_bf16 else pytest.mark.slow


@pytest.mark.parametrize("precision", ["32", pytest.param("bf16-mixed", marks=EMULATED_BF16)])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, precision, capsys):
    root = make_camvid_segnet(tmp_path / "camvid", {"train": 8, "val": 2, "test": 1})
    killed = fit_in_a_process(
        root, tmp_path / "resumed", precision, "--trainer.callbacks+=synthetic.KillAtStep", "--trainer.callbacks.step=7"
    )
    assert killed.returncode == 3, killed.stderr[-3000:]  # died mid-epoch, after last.ckpt at step 6
    assert newest_last(tmp_path / "resumed")["global_step"] == 6
    last_before = max((tmp_path / "resumed").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)

    # The uninterrupted and the resumed run in this process (each seeds itself from the config).
    build_cli(fit_args(root, tmp_path / "straight", precision))
    straight = capsys.readouterr().out
    cli = build_cli(fit_args(root, tmp_path / "resumed", precision, "--ckpt_path=last"))
    resumed = capsys.readouterr().out
    assert cli.trainer.ckpt_path == str(last_before)  # --ckpt_path last found the killed run's checkpoint

    a, b = newest_last(tmp_path / "straight"), newest_last(tmp_path / "resumed")
    assert a["global_step"] == b["global_step"] == 9
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    groups_a, groups_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert [g["lr"] for g in groups_a["param_groups"]] == [g["lr"] for g in groups_b["param_groups"]]
    for index, state in groups_a["state"].items():
        torch.testing.assert_close(
            groups_b["state"][index]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=1e-6
        )
    final_a = [line for line in straight.splitlines() if line.startswith("Validation at step 9")]
    final_b = [line for line in resumed.splitlines() if line.startswith("Validation at step 9")]
    assert final_a and final_a == final_b


EMA = ["--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.5"]


@pytest.mark.parametrize("averaging", [[], EMA], ids=["plain", "ema"])
def test_a_run_stopped_at_max_steps_and_continued_longer_matches_one_never_stopped(tmp_path, averaging):
    """Stopped by max_steps=1 mid-epoch and continued to 3 steps: the same epoch, order and weights as 3
    steps straight (it used to start a new epoch, and to take its first step at the old schedule's rate);
    with an EMA of the weights, the same average and the same trained weights."""
    root = make_camvid_segnet(tmp_path / "camvid", {"train": 8, "val": 2, "test": 1})
    quick = ["--trainer.limit_val_batches=0", "--data.num_workers=0", *averaging]
    build_cli(fit_args(root, tmp_path / "straight", "32", *quick, "--trainer.max_steps=3"))
    build_cli(fit_args(root, tmp_path / "resumed", "32", *quick, "--trainer.max_steps=1"))
    assert newest_last(tmp_path / "resumed")["epoch"] == 0  # saved mid-epoch, as the periodic saves are
    build_cli(fit_args(root, tmp_path / "resumed", "32", *quick, "--trainer.max_steps=3", "--ckpt_path=last"))
    a, b = newest_last(tmp_path / "straight"), newest_last(tmp_path / "resumed")
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"]) == (3, 0)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    if averaging:  # the trained weights beside the average, for the next --ckpt_path last
        for key, value in a["current_model_state"].items():
            torch.testing.assert_close(b["current_model_state"][key], value, rtol=0, atol=1e-6, msg=key)
    assert not list((tmp_path / "resumed").rglob("last-v*.ckpt"))  # one last.ckpt per run folder


def test_a_checkpoint_that_fails_to_write_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """A full disk used to leave a truncated last.ckpt at the final path (Lightning staged the file in
    the system's temporary folder and copied it across)."""
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    checkpoint_io = trainer.strategy.checkpoint_io
    assert isinstance(checkpoint_io, AtomicCheckpointIO)
    path = tmp_path / "last.ckpt"
    checkpoint_io.save_checkpoint({"step": 1}, path)

    def disk_full(obj, file):
        Path(file).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoint_io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1} and sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt"
    ]


class Messages(logging.Handler):
    """Every message a logger passes on, whatever pytest's capture of logs did in earlier tests of the process."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_last_ckpt_holds_the_last_step_even_between_its_periodic_saves(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    out = tmp_path / "out"
    lightning_log = logging.getLogger("lightning.pytorch")  # it does not propagate to the root logger
    seen = Messages()
    lightning_log.addHandler(seen)
    try:
        build_cli([
            "fit", "--config", str(REPO / "configs" / "camvid_cpu.yaml"), f"--data.root={root}", "--data.batch_size=2",
            "--data.crop_size=[32,48]", "--trainer.precision=32", "--progress_bar.refresh_rate=0",
            "--trainer.max_steps=3", "--trainer.limit_val_batches=0", "--last_checkpoint.every_n_train_steps=2",
            f"--trainer.default_root_dir={out}",
        ])  # fmt: skip
    finally:
        lightning_log.removeHandler(seen)
    assert torch.load(next(out.rglob("last.ckpt")), weights_only=True)["global_step"] == 3  # not 2
    # The save between periodic ones is a full checkpoint, asked for as such: no note that it defaulted to one.
    text = "\n".join(seen.messages)
    assert "`max_steps=3` reached" in text  # the handler saw Lightning's lines
    assert "weights_only" not in text


def test_resuming_on_a_changed_training_split_says_so():
    images = TensorDataset(torch.zeros(10, 1))
    loader = resumable_train_loader(images, batch_size=2)
    assert loader.state_dict() == {"epoch": 0, "batches_done": 0, "images": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.load_state_dict({"epoch": 1, "batches_done": 2, "images": 10})  # the same split: silent
    with pytest.warns(UserWarning, match=r"the training split had 12 images when the checkpoint was saved and has 10"):
        loader.load_state_dict({"epoch": 1, "batches_done": 2, "images": 12})
    assert loader.batch_sampler.sampler.epoch == 1 and loader.batch_sampler.skip == 2
