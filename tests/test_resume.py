"""A run killed mid-epoch and resumed with --ckpt_path last ends exactly as an uninterrupted one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic import make_camvid_segnet

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("bisenet-pl")


def fit(root: Path, out: Path, precision: str, *extra: str) -> subprocess.CompletedProcess:
    args = [
        str(SCRIPT), "fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}",
        "--trainer.accelerator=cpu", f"--trainer.precision={precision}", "--data.batch_size=2", "--data.num_workers=1",
        "--data.crop_size=[32,48]", "--data.val_batch_size=1", "--progress_bar.refresh_rate=0",
        # 4 steps per epoch; last.ckpt every 3 steps; validation every 3 steps.
        "--trainer.max_steps=9", "--trainer.val_check_interval=3", "--last_checkpoint.every_n_train_steps=3",
        "--model.warmup_steps=2", f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", *extra,
    ]  # fmt: skip
    env = os.environ | {"WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def newest_last(out: Path) -> dict:
    path = max(out.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    return torch.load(path, map_location="cpu", weights_only=True)


# Mixed precision on the CPU is bf16 (Lightning turns 16-mixed into bf16-mixed there and keeps no
# GradScaler; on GPUs it saves the scaler's state in the checkpoint).
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, precision):
    root = make_camvid_segnet(tmp_path / "camvid", {"train": 8, "val": 2, "test": 1})
    straight = fit(root, tmp_path / "straight", precision)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = fit(root, tmp_path / "resumed", precision, "--trainer.callbacks+=synthetic.KillAtStep", "--trainer.callbacks.step=7")
    assert killed.returncode == 3, killed.stderr[-3000:]  # died mid-epoch, after last.ckpt at step 6
    assert newest_last(tmp_path / "resumed")["global_step"] == 6
    resumed = fit(root, tmp_path / "resumed", precision, "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stdout + resumed.stderr

    a, b = newest_last(tmp_path / "straight"), newest_last(tmp_path / "resumed")
    assert a["global_step"] == b["global_step"] == 9
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    groups_a, groups_b = a["optimizer_states"][0], b["optimizer_states"][0]
    assert [g["lr"] for g in groups_a["param_groups"]] == [g["lr"] for g in groups_b["param_groups"]]
    for index, state in groups_a["state"].items():
        torch.testing.assert_close(groups_b["state"][index]["momentum_buffer"], state["momentum_buffer"], rtol=0, atol=1e-6)
    final_a = [line for line in straight.stdout.splitlines() if line.startswith("Validation at step 9")]
    final_b = [line for line in resumed.stdout.splitlines() if line.startswith("Validation at step 9")]
    assert final_a and final_a == final_b
