"""The module's option groups (loss, optimizer, evaluation) and their former flat names: keyword arguments,
older checkpoints, saved configs and typed options still read, each with a warning that names the move."""

from pathlib import Path

import pytest
import torch
from synthetic import TinyNetwork, make_camvid_segnet

from bisenet_pl.cli import build_cli, main
from bisenet_pl.errors import ConfigError
from bisenet_pl.evaluation import EvaluationProtocol
from bisenet_pl.losses import LossOptions
from bisenet_pl.module import SegmentationModule
from bisenet_pl.module_options import RENAMED, upgrade_command_line, upgrade_options
from bisenet_pl.optim import OptimizerOptions

REPO = Path(__file__).resolve().parents[1]
CPU = [
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--trainer.logger=false",
    "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]", "--data.val_batch_size=1",
    "--progress_bar.refresh_rate=0", "--trainer.enable_checkpointing=false",
]  # fmt: skip
FLAT = {"loss": "ce", "aux_weights": 0.0, "optimizer": "adamw", "lr": 0.003, "eval_mode": "msf", "eval_flip": False}


def test_the_groups_are_the_module_options_and_plain_data_in_its_hyperparameters():
    module = SegmentationModule(
        net=TinyNetwork, num_classes=3, loss=LossOptions("ce"), optimizer={"lr": 0.01}, evaluation=EvaluationProtocol()
    )
    assert module.loss_options.name == "ce" and module.optimizer_options == OptimizerOptions(lr=0.01)
    assert module.hparams.optimizer == {**module.hparams.optimizer, "name": "sgd", "lr": 0.01}
    assert module.hparams.evaluation["crop_size"] == [1024, 1024]  # a list: checkpoints load with weights_only
    groups = {"loss", "optimizer", "evaluation"}
    assert set(module.hparams) - groups == {"net", "num_classes", "ignore_index", "class_names", "pretrained",
                                            "backbone_weights", "compile", "channels_last"}  # fmt: skip


def test_former_flat_keyword_arguments_are_moved_into_their_groups_with_a_warning():
    with pytest.warns(UserWarning, match=r"model.lr -> model.optimizer.lr.*model.eval_mode -> model.evaluation.mode"):
        module = SegmentationModule(net=TinyNetwork, num_classes=3, **FLAT)
    assert module.loss_options == LossOptions("ce", aux_weights=0.0)
    assert module.optimizer_options == OptimizerOptions("adamw", lr=0.003)
    assert module.evaluation == EvaluationProtocol("msf", flip=False)
    assert "lr" not in module.hparams and module.hparams.optimizer["lr"] == 0.003  # saved under the new name only
    with pytest.raises(ConfigError, match="SegmentationModule has no option learning_rate"):
        SegmentationModule(net=TinyNetwork, num_classes=3, learning_rate=0.1)
    with pytest.raises(ConfigError, match="model.optimizer has no option rate; it has head_lr_multiplier, lr"):
        SegmentationModule(net=TinyNetwork, num_classes=3, optimizer={"rate": 0.1})
    with pytest.raises(ConfigError, match=r"model.optimizer.lr must be > 0; got -1"):
        OptimizerOptions(lr=-1)


def test_every_former_name_has_a_field_in_its_group():
    fields = {name: set(kind.__dataclass_fields__) for name, kind in
              (("loss", LossOptions), ("optimizer", OptimizerOptions), ("evaluation", EvaluationProtocol))}  # fmt: skip
    assert all(field in fields[group] for group, field in RENAMED.values())
    assert len(RENAMED) == 18
    # a group given as a group is left alone; a name where a group is now is moved
    assert upgrade_options({"loss": {"name": "ce"}, "optimizer": None}, "x") == {
        "loss": {"name": "ce"},
        "optimizer": None,
    }


def test_an_older_checkpoint_loads_in_python_and_on_the_command_line(tmp_path, monkeypatch):
    """A checkpoint written before the groups (flat hyperparameters) resumes, tests and loads."""
    root = make_camvid_segnet(tmp_path / "camvid")
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "camvid.yaml")
    trained = build_cli(["fit", "--config", config, f"--data.root={root}", *CPU, "--trainer.fast_dev_run=true"])
    checkpoint = tmp_path / "old.ckpt"
    trained.trainer.save_checkpoint(checkpoint)
    stored = torch.load(checkpoint, weights_only=True)
    hparams = stored["hyper_parameters"]
    for name in ("loss", "optimizer", "evaluation"):
        hparams.pop(name)
    hparams |= FLAT | {"eval_mode": "ss", "aux_weights": [1.0, 1.0, 0.5, 1.0]}  # as bisenet-pl 0.1 saved them
    torch.save(stored, checkpoint)
    with pytest.warns(UserWarning, match="model.optimizer -> model.optimizer.name"):
        loaded = SegmentationModule.load_from_checkpoint(checkpoint)
    assert loaded.optimizer_options.name == "adamw" and loaded.loss_options.name == "ce"
    assert loaded.aux_weights == [1.0, 1.0, 0.5, 1.0]  # the checkpoint's, not the default
    with pytest.warns(UserWarning, match=f"{checkpoint}: read with the options' new names"):
        tested = build_cli(["test", "--config", config, f"--data.root={root}", *CPU, f"--ckpt_path={checkpoint}",
                            "--trainer.limit_test_batches=1"])  # fmt: skip
    assert tested.model.optimizer_options.lr == 0.003 and tested.model.evaluation.mode == "ss"


def test_a_saved_config_and_typed_options_with_former_names_still_parse(tmp_path, monkeypatch):
    root = make_camvid_segnet(tmp_path / "camvid")
    monkeypatch.chdir(tmp_path)
    released = REPO / "weights" / "bisenetv2_camvid_config.yaml"  # saved by bisenet-pl 0.1: flat names
    before = released.read_text()
    with pytest.warns(UserWarning, match=f"{released}: read with the options' new names .*model.lr -> model.optimizer"):
        cli = build_cli(["validate", "--config", str(released), f"--data.root={root}", *CPU, "--model.lr=0.02",
                         "--trainer.limit_val_batches=1", "--data.dev_sequences=null"])  # fmt: skip
    assert released.read_text() == before  # read, never rewritten
    assert cli.model.loss_options.name == "ce" and cli.model.loss_options.class_weights[-1] == 2.98
    assert cli.model.optimizer_options == OptimizerOptions("adamw", lr=0.02, weight_decay=0.01, head_lr_multiplier=1.0,
                                                           warmup_steps=40)  # fmt: skip
    assert cli.model.evaluation == EvaluationProtocol("ss")
    with pytest.warns(UserWarning, match=r"--model.eval_mode is now --model.evaluation.mode \(read as it\)"):
        args = upgrade_command_line(["fit", "--model.eval_mode", "msf", "--model.loss=ce", "--model.loss.name=ohem"])
    assert args == ["fit", "--model.evaluation.mode", "msf", "--model.loss.name=ce", "--model.loss.name=ohem"]
    with pytest.raises(SystemExit, match="model.loss.ohem_threshold must be in"):
        main(["fit", "--config", str(released), f"--data.root={root}", *CPU, "--model.ohem_threshold=2"])
