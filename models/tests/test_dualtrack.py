"""Dual-track loop: the agreement rule, bad inputs, and a tiny seeded run that is killed after its
bootstrap round, resumed, and ends with a better U-Net than its initialisation."""

import json

import numpy as np
import pytest
import torch

from spatialsam.data import make_demo_volume
from spatialsam.dualtrack import DualTrackConfig, agreement_pseudo_labels, run_dualtrack


def test_agreement_rule():
    pu = np.array([[[0.9, 0.9, 0.1, 0.2]], [[0.6, 0.1, 0.3, 0.9]]], np.float32)
    pp = np.array([[[0.8, 0.2, 0.1, 0.7]], [[0.0, 0.0, 0.0, 0.0]]], np.float32)
    labels = np.array([[[0, 0, 0, 0]], [[1, 1, 0, 0]]], np.uint8)
    mask, w = agreement_pseudo_labels(pu, pp, labels, [1], annotated_weight=1.0, pseudo_weight=0.5)
    # Slice 0: agree fg (conf min(0.8, 0.6)), disagree, agree bg (0.8), disagree. The annotated
    # slice is half foreground (ratio 1), so background weight 0.4 is scaled down to fg's 0.3.
    assert mask[0, 0].tolist() == [True, False, False, False]
    np.testing.assert_allclose(w[0, 0], [0.5 * 0.6, 0, 0.5 * 0.6, 0], atol=1e-6)
    # Slice 1 is annotated: its labels, highest weight.
    assert mask[1, 0].tolist() == [True, True, False, False]
    assert np.all(w[1] == 1.0)


@pytest.fixture(scope="module")
def demo():
    img, lab = make_demo_volume((16, 64, 64), seed=4)
    return img, lab > 0


def _cfg(**kw):
    base = dict(rounds=1, threads=1, unet={"channels": [8, 16], "pool": [[2, 2, 2]]}, unet_crop_zyx=(8, 48, 48), unet_lr=5e-3,
                unet_steps=30, mask_steps=2, mask_batch_size=1, mask_crop=64, mask_run_length=3, seed=1)
    base.update(kw)
    return DualTrackConfig(**base)


def test_bad_inputs(demo, tmp_path):
    img, gt = demo
    with pytest.raises(ValueError, match="annotated_slices: empty"):
        run_dualtrack(img, gt, [], (5, 5, 5), _cfg(), tmp_path)
    with pytest.raises(ValueError, match="labels: shape"):
        run_dualtrack(img, gt[:-1], [3], (5, 5, 5), _cfg(), tmp_path)
    with pytest.raises(ValueError, match="image: contains NaN"):
        run_dualtrack(np.full(img.shape, np.nan, np.float32), gt, [3], (5, 5, 5), _cfg(), tmp_path)
    with pytest.raises(ValueError, match="labels: no foreground"):
        run_dualtrack(img, np.zeros_like(gt), [3], (5, 5, 5), _cfg(), tmp_path)
    with pytest.raises(ValueError, match="pseudo_weight"):
        _cfg(pseudo_weight=2.0)


def test_tiny_run_killed_resumed_and_improving(demo, tmp_path):
    img, gt = demo
    slices = [4, 11]
    labels = np.zeros_like(gt)
    labels[slices] = gt[slices]
    cfg = _cfg()
    killed = run_dualtrack(img, labels, slices, (5, 5, 5), cfg, tmp_path, progress=False, eval_mask=gt, _kill_after_round=0)
    assert killed == {"rounds": 1, "killed": True}
    res = run_dualtrack(img, labels, slices, (5, 5, 5), cfg, tmp_path, progress=False, eval_mask=gt)
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1]
    assert res["rounds"] == 2 and res["unet"].endswith("round_1/unet/best.pt")
    # The SDF track of round 1 continued from round 0's U-Net and beats its initialisation.
    assert rounds[1]["unet_iou"] > rounds[0]["unet_iou"]
    pseudo = np.load(tmp_path / "round_1" / "pseudo.npz")
    assert pseudo["mask"].shape == gt.shape and pseudo["weight"].dtype == np.float32
    assert np.array_equal(pseudo["mask"][slices], gt[slices])
    assert torch.load(res["unet"], weights_only=False)["step"] == cfg.unet_steps
