"""U-Net losses: values on hand-computed cases, weighting, bad inputs."""

import math

import pytest
import torch

from spatialsam.losses import sdf_loss, sign_loss, unet_loss


def test_sdf_loss_weighted_mean_l1():
    p = torch.tensor([0.0, 0.5, 1.0])
    t = torch.tensor([1.0, 0.5, 0.0])
    w = torch.tensor([1.0, 1.0, 0.0])
    assert float(sdf_loss(p, t, w)) == pytest.approx(0.5)


def test_sign_loss_matches_bce_and_ignores_zero_weight():
    logit = torch.tensor([0.0, 2.0, -3.0])
    mask = torch.tensor([1.0, 0.0, 0.0])
    w = torch.tensor([1.0, 1.0, 0.0])
    expected = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert float(sign_loss(logit, mask, w)) == pytest.approx(expected, rel=1e-5)


def test_unet_loss_uses_sdf_sign_and_rejects_bad_input():
    shape = (1, 1, 2, 4, 4)
    sdf = torch.zeros(shape, requires_grad=True)
    fg = torch.zeros(shape, requires_grad=True)
    tgt = torch.full(shape, 0.5)
    loss, parts = unet_loss(sdf, fg, tgt, torch.ones(shape))
    loss.backward()
    assert parts["sdf"] == pytest.approx(0.5) and parts["sign"] == pytest.approx(math.log(2), rel=1e-5)
    assert float(fg.grad.sum()) < 0  # pushes the logit up: target is foreground
    with pytest.raises(ValueError, match="weight: all zero"):
        unet_loss(sdf, fg, tgt, torch.zeros(shape))
    with pytest.raises(ValueError, match="target_sdf"):
        unet_loss(sdf, fg, torch.zeros((1, 1, 2, 4, 5)), torch.ones(shape))
    with pytest.raises(ValueError, match="target_sdf: contains NaN"):
        unet_loss(sdf, fg, torch.full(shape, float("nan")), torch.ones(shape))
