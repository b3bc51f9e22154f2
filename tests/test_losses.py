"""Losses against hand computations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bisenet_pl.losses import CrossEntropy, DiceLoss, OhemCrossEntropy, build_loss


def pixel_ce_numpy(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel cross-entropy by hand: logsumexp(z) - z[target]."""
    z = logits.transpose(0, 2, 3, 1).reshape(-1, logits.shape[1]).astype(np.float64)
    t = target.reshape(-1)
    m = z.max(1, keepdims=True)
    logsumexp = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    return logsumexp - z[np.arange(len(t)), np.clip(t, 0, z.shape[1] - 1)]


def ohem_numpy(logits, target, ignore=255, threshold=0.7, fraction=1 / 16):
    losses = pixel_ce_numpy(logits, target)[target.reshape(-1) != ignore]
    min_kept = int(len(losses) * fraction)
    hard = losses[losses > -math.log(threshold)]
    if len(hard) < min_kept:
        hard = np.sort(losses)[::-1][:min_kept]
    return hard.mean()


@pytest.mark.parametrize("confidence", [0.0, 6.0])  # many hard pixels / few hard pixels (top-k path)
def test_ohem_matches_hand_computation(confidence):
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(2, 16, 16))
    target[:, :3] = 255
    logits = rng.normal(size=(2, 5, 16, 16))
    # Make most pixels confidently right so that only a few exceed the threshold.
    np.put_along_axis(logits, np.clip(target, 0, 4)[:, None], confidence, axis=1)
    # Ignored pixels get huge losses: they must never be selected.
    logits[:, :, :3] = rng.normal(size=(2, 5, 3, 16)) * 50
    expected = ohem_numpy(logits, target)
    loss = OhemCrossEntropy(ignore_index=255)(torch.tensor(logits, dtype=torch.float32), torch.tensor(target))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    hard_share = (pixel_ce_numpy(logits, target)[target.reshape(-1) != 255] > -math.log(0.7)).mean()
    assert (hard_share < 1 / 16) == (confidence > 0)  # both selection paths are exercised


def test_cross_entropy_with_ignore_and_class_weights():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    target[0, 0] = 255
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0])
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert torch.allclose(CrossEntropy(255, weights)(logits, target), expected)
    valid = target != 255
    w = weights[target[valid]]
    hand = (w * torch.tensor(pixel_ce_numpy(logits.numpy(), target.numpy()))[valid.flatten()].float()).sum() / w.sum()
    assert torch.allclose(expected, hand, atol=1e-5)


def test_all_ignored_gives_zero_loss_with_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    for loss_fn in (CrossEntropy(), OhemCrossEntropy(), DiceLoss()):
        loss = loss_fn(logits, target)
        loss.backward()
        assert loss.item() == 0.0 or isinstance(loss_fn, DiceLoss)
        assert logits.grad is not None


def test_dice_perfect_and_ignored_pixels():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert DiceLoss()(perfect, target).item() < 1e-3
    noisy = torch.randn(2, 3, 8, 8)
    masked = target.clone()
    masked[:, :2] = 255
    changed = noisy.clone()
    changed[:, :, :2] = torch.randn(2, 3, 2, 8) * 10  # logits under ignored pixels do not matter
    assert torch.allclose(DiceLoss()(noisy, masked), DiceLoss()(changed, masked))


def test_losses_are_float32_under_autocast():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    for name in ("ce", "ohem", "dice", "ohem+dice"):
        loss_fn = build_loss(name)
        reference = loss_fn(logits, target)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = loss_fn(logits.bfloat16(), target)
        assert low.dtype == torch.float32 and torch.isfinite(low)
        assert low.item() == pytest.approx(reference.item(), rel=0.02)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss("focal")
