"""The LightningModule: metrics, optimiser, schedule, aux heads, pretrained weights, precision."""

import functools
import logging

import lightning as L
import numpy as np
import pytest
import torch
from conftest import reference_state_dict
from synthetic import TinyNetwork, make_folder

from bisenet_pl import precision as precision_module
from bisenet_pl.data import FolderDataModule
from bisenet_pl.losses import LossOptions
from bisenet_pl.models import BiSeNetV1, BiSeNetV2
from bisenet_pl.module import SegmentationModule
from bisenet_pl.optim import OptimizerOptions, WarmupPolyLR, optimizer_and_schedule


def numpy_scores(preds: np.ndarray, target: np.ndarray, num_classes: int, ignore: int):
    valid = target != ignore
    confusion = np.bincount(num_classes * target[valid] + preds[valid], minlength=num_classes**2).reshape(
        num_classes, -1
    )
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / union
    return np.nanmean(iou), iou, intersection.sum() / confusion.sum(), confusion


def test_metrics_equal_numpy_confusion_matrix_miou():
    module = SegmentationModule(net=BiSeNetV2, num_classes=5, ignore_index=255, class_names=list("abcde"))
    rng = np.random.default_rng(0)
    all_preds, all_targets = [], []
    for _ in range(4):  # accumulated over the whole set, not averaged per batch
        target = rng.integers(0, 4, size=(2, 16, 16))  # class 4 never appears in targets...
        target[rng.random(target.shape) < 0.1] = 255
        preds = np.where(rng.random(target.shape) < 0.6, np.clip(target, 0, 3), rng.integers(0, 4, size=target.shape))
        module.metrics["val"].update(torch.tensor(preds), torch.tensor(target))  # ...nor in predictions
        all_preds.append(preds.ravel())
        all_targets.append(target.ravel())
    results = module.metrics["val"].compute()
    miou, iou, accuracy, confusion = numpy_scores(np.concatenate(all_preds), np.concatenate(all_targets), 5, 255)
    assert results["val/mIoU"].item() == pytest.approx(miou, abs=1e-6)  # absent class 4 excluded
    assert np.allclose(results["val/IoU"][:4].numpy(), iou[:4])
    assert results["val/pixel_accuracy"].item() == pytest.approx(accuracy, abs=1e-6)
    assert np.array_equal(results["val/confusion_matrix"].numpy(), confusion)


def test_warmup_poly_schedule():
    schedule = WarmupPolyLR(total_steps=1000, warmup_steps=100, warmup_ratio=0.1, power=0.9)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(50) == pytest.approx(0.1**0.5)  # exponential warm-up
    assert schedule(100) == pytest.approx(1.0)
    assert schedule(550) == pytest.approx(0.5**0.9)
    assert schedule(1000) == 0.0
    values = [schedule(s) for s in range(1001)]
    assert all(a <= b for a, b in zip(values[:100], values[1:101])) and all(
        a >= b for a, b in zip(values[100:], values[101:])
    )


def test_a_warmup_longer_than_the_run_is_capped_and_said(tmp_path):
    """1000 warm-up steps in a 400-step run used to stretch the warm-up over the whole run, so the
    learning rate never reached its value nor decayed."""
    schedule = WarmupPolyLR(total_steps=400, warmup_steps=1000)
    assert schedule.warmup_steps == 40 and schedule(40) == 1.0 and schedule(220) == pytest.approx(0.5**0.9)
    assert WarmupPolyLR(total_steps=20000, warmup_steps=1000).warmup_steps == 1000  # the reference's recipe is kept
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, optimizer=OptimizerOptions(warmup_steps=1000))
    with pytest.warns(
        UserWarning,
        match=r"model.optimizer.warmup_steps=1000 is more than 10% of this run's 20 steps: warming up over 2 steps",
    ):
        trainer = fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=20)
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].warmup_steps == 2


def tiny_datamodule(tmp_path, **kwargs):
    root = make_folder(tmp_path / "folder", num_classes=3, counts={"train": 4, "val": 2})
    options = dict(batch_size=2, num_workers=0, crop_size=(32, 48), val_batch_size=2) | kwargs
    return FolderDataModule(root=str(root), num_classes=3, **options)


def fit(module, datamodule, tmp_path, **trainer_kwargs):
    options = dict(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    ) | trainer_kwargs  # fmt: skip
    trainer = L.Trainer(**options)
    trainer.fit(module, datamodule)
    return trainer


def test_optimiser_groups_and_lr_follow_the_reference(tmp_path):
    module = SegmentationModule(
        net=BiSeNetV2, num_classes=3, optimizer=OptimizerOptions(lr=0.02, warmup_steps=2, weight_decay=1e-4)
    )
    trainer = fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=4)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert set(groups) == {"body", "body_no_decay", "head", "head_no_decay"}
    head_ids = {id(p) for name in ("head", "aux_heads") for p in getattr(module.net, name).parameters()}
    for name, group in groups.items():
        assert all((id(p) in head_ids) == name.startswith("head") for p in group["params"])
        assert all((p.ndim > 1) == (not name.endswith("no_decay")) for p in group["params"])
        assert group["weight_decay"] == (0.0 if name.endswith("no_decay") else 1e-4)
        assert group["momentum"] == 0.9
        base = 0.02 * (10 if name.startswith("head") else 1)
        assert group["initial_lr"] == pytest.approx(base)
        assert group["lr"] == pytest.approx(base * WarmupPolyLR(4, 2)(4))  # stepped every iteration
    assert sum(len(g["params"]) for g in groups.values()) == len(list(module.net.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_fused_update_on_a_cpu_is_torch_s_update(optimizer):
    torch.manual_seed(0)
    nets = [BiSeNetV2(num_classes=3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    options = OptimizerOptions(optimizer, lr=0.05, weight_decay=1e-4, warmup_steps=1)
    fused, unfused = (optimizer_and_schedule(net, 10, options) for net in nets)
    assert all(group["fused"] for group in fused["optimizer"].param_groups)
    for group in unfused["optimizer"].param_groups:
        group["fused"] = None  # torch's default, one parameter at a time
    for _ in range(3):
        for ours, theirs in zip(*(net.parameters() for net in nets)):
            ours.grad = torch.randn_like(ours)
            theirs.grad = ours.grad.clone()
        for built in (fused, unfused):
            built["optimizer"].step()
            built["lr_scheduler"]["scheduler"].step()
    for ours, theirs in zip(*(net.parameters() for net in nets)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_bisenetv1_fusion_trains_at_head_rate(tmp_path):
    module = SegmentationModule(net=BiSeNetV1, num_classes=3)
    trainer = fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=1)
    head_params = {
        id(p) for g in trainer.optimizers[0].param_groups if g["name"].startswith("head") for p in g["params"]
    }
    assert {id(p) for p in module.net.fusion.parameters()} <= head_params


def test_zero_aux_weight_removes_the_head(tmp_path):
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, loss=LossOptions(aux_weights=[1.0, 0.0, 0.0, 0.5]))
    assert list(module.net.aux_heads) == ["stem", "stage5"] and module.aux_weights == [1.0, 0.5]
    fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=1)
    none = SegmentationModule(net=BiSeNetV2, num_classes=3, loss=LossOptions(aux_weights=0))
    assert len(none.net.aux_heads) == 0
    fit(none, tiny_datamodule(tmp_path), tmp_path, max_steps=1)
    no_heads = SegmentationModule(
        net=functools.partial(BiSeNetV2, aux_heads=[]), num_classes=3, loss=LossOptions(aux_weights=[])
    )
    fit(no_heads, tiny_datamodule(tmp_path), tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="aux_weights has 2 values for the network's 4 aux heads"):
        SegmentationModule(net=BiSeNetV2, num_classes=3, loss=LossOptions(aux_weights=[1.0, 1.0]))


@pytest.mark.parametrize(
    # 16-mixed needs a GPU: on the CPU Lightning runs it as bf16-mixed.
    "precision,options",
    [("32", {}), ("bf16-mixed", {}), ("32", {"channels_last": True})],
)
def test_trains_and_validates(tmp_path, precision, options):
    module = SegmentationModule(
        net=BiSeNetV2, num_classes=3, class_names=["a", "b", "c"], loss=LossOptions("ohem+dice"), **options
    )
    trainer = fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=2, precision=precision, val_check_interval=2)
    metrics = trainer.callback_metrics
    assert 0 <= metrics["val/mIoU"] <= 1 and "val/IoU/b" in metrics and torch.isfinite(metrics["train/loss"])
    assert module.confusion_matrices["val"].shape == (3, 3)


@pytest.mark.parametrize("faster", ["32-true NCHW", "32-true channels-last"])
def test_channels_last_auto_in_python_measures_with_the_trainers_precision(tmp_path, monkeypatch, caplog, faster):
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache"))
    timed = []

    def fake_timing(steps, **_):
        timed.append(sorted(steps))
        return {name: 1.0 if name == faster else 1.5 for name in steps}

    monkeypatch.setattr(precision_module, "time_alternately", fake_timing)
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, channels_last="auto")
    with caplog.at_level(logging.INFO):
        fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=1, limit_val_batches=0)
    assert timed == [["32-true NCHW", "32-true channels-last"]]  # the Trainer's precision, both formats
    assert module.uses_channels_last == (faster == "32-true channels-last")
    weight = module.net.detail_branch.stage1[0].conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) == module.uses_channels_last
    assert f"model.channels_last=auto: {faster}, the fastest for a training step" in caplog.text
    # Without a DataModule's batch and crop there is nothing to measure: NCHW, said so.
    bare = SegmentationModule(net=BiSeNetV2, num_classes=3, channels_last="auto")
    loader = tiny_datamodule(tmp_path / "bare")
    loader.setup("fit")
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer.fit(bare, train_dataloaders=loader.train_dataloader())
    assert bare.measured_channels_last is False and "NCHW, as there is no DataModule's batch_size" in caplog.text


def test_pretrained_coincheung_weights_to_other_classes(tmp_path, reference_dir, caplog):
    state = reference_state_dict(reference_dir / "bisenetv2_state_dict_keys.tsv")
    torch.save(state, tmp_path / "model_final_v2_city.pth")
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, pretrained=str(tmp_path / "model_final_v2_city.pth"))
    with caplog.at_level(logging.INFO):
        module.setup("fit")
    converted = module.net.aggregation.fuse.conv.weight
    assert torch.equal(converted, state["bga.conv.0.weight"])
    assert module.net.head.classifier.weight.shape[0] == 3
    assert "Re-initialised classifier layers for 3 classes (the checkpoint has 19)" in caplog.text
    # Same class count: everything loads, classifiers included.
    same = SegmentationModule(net=BiSeNetV2, num_classes=19, pretrained=str(tmp_path / "model_final_v2_city.pth"))
    same.setup("validate")
    assert torch.equal(same.net.head.classifier.weight, state["head.conv_out.1.weight"])
    wrong = SegmentationModule(net=BiSeNetV1, num_classes=19, pretrained=str(tmp_path / "model_final_v2_city.pth"))
    with pytest.raises(ValueError, match="does not fit this network"):
        wrong.setup("fit")


def test_non_finite_loss_stops_with_the_step(tmp_path):
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, optimizer=OptimizerOptions(lr=1e30, warmup_steps=0))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* at step \d+: lower model.optimizer.lr"):
        fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=20)


def test_checkpoints_rebuild_their_network(tmp_path):
    module = SegmentationModule(
        net=functools.partial(BiSeNetV1, backbone="resnet34"), num_classes=3, loss=LossOptions(aux_weights=[1.0, 0.0])
    )
    assert module.hparams.net == {
        "class_path": "bisenet_pl.models.bisenetv1.BiSeNetV1",
        "init_args": {"backbone": "resnet34"},
    }
    assert module.aux_names == ["context8"]
    trainer = fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=1)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = SegmentationModule.load_from_checkpoint(tmp_path / "model.ckpt", map_location="cpu")
    assert loaded.net.context_path.backbone.name == "resnet34" and list(loaded.net.aux_heads) == ["context8"]
    for (name, a), b in zip(module.net.state_dict().items(), loaded.net.state_dict().values()):
        assert torch.equal(a, b), name


def test_compile_option_keeps_state_dict_keys(tmp_path):
    module = SegmentationModule(net=TinyNetwork, num_classes=3, compile=True, loss=LossOptions(aux_weights=0.0))
    keys = set(module.net.state_dict())
    fit(module, tiny_datamodule(tmp_path), tmp_path, max_steps=2)
    assert module.net._compiled_call_impl is not None  # nn.Module.compile: compiled in place
    assert set(module.net.state_dict()) == keys  # no _orig_mod. prefix in checkpoints
