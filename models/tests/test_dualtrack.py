"""Dual-track loop: the pseudo-label rules, bad inputs, and a tiny seeded run that is killed after its
bootstrap round, resumed, and ends with a better U-Net than its initialisation."""

import json

import numpy as np
import pytest
import torch

from spatialsam.data import make_demo_volume
from spatialsam.dualtrack import DualTrackConfig, fuse_pseudo_labels, run_dualtrack, sdf_track_weight, unet_pseudo_labels
from spatialsam.train_unet import make_train_data, train_unet


def test_fuse_rule():
    """The U-Net's mask, kept for its components that a propagated object overlaps; weights from the
    U-Net's confidence, lowered where the tracks disagree; dropped components: full background."""
    pu = np.full((3, 1, 8), 0.1, np.float32)
    pp = np.zeros((3, 1, 8), np.float32)
    pu[0, 0, 0:3] = 0.9  # component A (voxels 0-2): the propagator carries it on voxels 1-3
    pp[0, 0, 1:4] = 0.8
    pu[0, 0, 5:7] = 0.7  # component B: no propagated object reaches it -> background
    pu[2, 0, 0] = 0.9  # annotated slice 2 overrides everything
    labels = np.zeros((3, 1, 8), np.uint8)
    labels[2, 0, 4] = 1
    mask, w = fuse_pseudo_labels(pu, pp, labels, [2], annotated_weight=1.0, pseudo_weight=0.5, disagreement_weight=0.5)
    assert mask[0, 0].tolist() == [True, True, True, False, False, False, False, False]
    conf = 0.5 * np.abs(2 * pu[0, 0] - 1)
    want = conf.copy()
    want[0] *= 0.5  # A, not propagated there
    want[3] *= 0.5  # propagated, but outside the U-Net's mask: background, at half weight
    want[5:7] = 0.5  # B dropped: background at full pseudo weight
    np.testing.assert_allclose(w[0, 0], want, atol=1e-6)
    assert not mask[1].any()
    assert mask[2, 0].tolist() == [False] * 4 + [True] + [False] * 3 and np.all(w[2] == 1.0)
    with pytest.raises(ValueError, match="p_prop"):
        fuse_pseudo_labels(pu, pp[:1], labels, [2])


def test_unet_pseudo_labels_drop_specks():
    pu = np.full((3, 8, 8), 0.1, np.float32)
    pu[0, 1:4, 1:4] = 0.9  # 9 voxels: kept
    pu[2, 6, 6] = 0.8  # 1 voxel: dropped
    labels = np.zeros(pu.shape, np.uint8)
    labels[1, 0, 0] = 1
    mask, w = unet_pseudo_labels(pu, labels, [1], annotated_weight=1.0, pseudo_weight=0.5, min_object_voxels=5)
    assert mask[0].sum() == 9 and not mask[2].any()
    assert mask[1].sum() == 1 and mask[1, 0, 0] and np.all(w[1] == 1.0)
    np.testing.assert_allclose(w[0, 2, 2], 0.5 * 0.8, atol=1e-6)


@pytest.fixture(scope="module")
def demo():
    img, lab = make_demo_volume((16, 64, 64), seed=4)
    return img, lab > 0


TINY_UNET = {"unet": {"channels": [8, 16], "pool": [[2, 2, 2]], "norm": "none"}, "crop_zyx": (8, 48, 48), "lr": 5e-3,
             "batch_size": 1, "amp": "none", "ema_decay": 0.0, "intensity_augment": 0.0, "fg_crop_fraction": 0.5}


def _cfg(**kw):
    base = dict(rounds=1, threads=1, unet_overrides=TINY_UNET, bootstrap_unet_steps=30, unet_steps=30, bootstrap_mask_steps=2,
                mask_steps=2, mask_batch_size=1, mask_crop=64, mask_run_length=3, min_object_voxels=10, seed=1)
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
    with pytest.raises(ValueError, match="disagreement_weight"):
        _cfg(disagreement_weight=-0.1)
    with pytest.raises(ValueError, match="pseudo_loss_weight"):
        _cfg(pseudo_loss_weight=0.0)
    with pytest.raises(ValueError, match="pseudo_band_nm"):
        _cfg(pseudo_band_nm=500.0)
    with pytest.raises(ValueError, match="pseudo_band_nm"):
        _cfg(pseudo_band_nm=-1.0)


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
    # Where a round's time went (round 0 here trains its own U-Net, round 1 also builds SDF targets).
    assert set(rounds[0]["parts_s"]) == {"unet_train", "unet_predict", "mask_train", "propagate", "pseudo_labels"}
    assert set(rounds[1]["parts_s"]) == set(rounds[0]["parts_s"]) | {"sdf_targets"}
    assert all(v >= 0 for r in rounds for v in r["parts_s"].values())
    assert sum(rounds[1]["parts_s"].values()) <= rounds[1]["time_s"] - rounds[0]["time_s"] + 0.5
    # CPU time accumulates across the kill: round 1's total includes round 0's.
    assert 0 < rounds[0]["cpu_s"] < rounds[1]["cpu_s"] == res["cpu_s"]
    assert res["rounds"] == 2 and res["unet"].endswith("round_1/unet/best.pt")
    # The SDF track of round 1 continued from round 0's U-Net and beats its initialisation.
    assert rounds[1]["unet_iou"] > rounds[0]["unet_iou"]
    pseudo = np.load(tmp_path / "round_1" / "pseudo.npz")
    assert pseudo["mask"].shape == gt.shape and pseudo["weight"].dtype == np.float32
    assert np.array_equal(pseudo["mask"][slices], gt[slices])
    assert torch.load(res["unet"], weights_only=False)["step"] == cfg.unet_steps


def test_bootstrap_from_a_finished_sparse_run(demo, tmp_path):
    """Round 0's SDF track can be a finished U-Net run on the same annotated slices (the benchmark
    reuses method (b)'s): no U-Net is trained in round 0, round 1 continues from its weights."""
    img, gt = demo
    slices = [4, 11]
    labels = np.zeros_like(gt)
    labels[slices] = gt[slices]
    cfg = _cfg()
    data = make_train_data(img, gt, (5, 5, 5), slices)
    summary = train_unet(data, cfg.unet_train_config(0), tmp_path / "b", progress=False)
    (tmp_path / "b" / "summary.json").write_text(json.dumps(summary))
    res = run_dualtrack(img, labels, slices, (5, 5, 5), cfg, tmp_path / "a", progress=False, bootstrap_unet=tmp_path / "b")
    assert not (tmp_path / "a" / "round_0" / "unet").exists()
    assert res["unet"].endswith("round_1/unet/best.pt") and res["mean"] == summary["mean"]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["bootstrap_unet"] == str(tmp_path / "b")
    with pytest.raises(ValueError, match="bootstrap_unet"):
        run_dualtrack(img, labels, slices, (5, 5, 5), cfg, tmp_path / "c", bootstrap_unet=tmp_path / "missing")


def test_boundary_band_drops_pseudo_weight_near_the_pseudo_boundary():
    """pseudo_band_nm: weight 0 within that distance of the pseudo mask's boundary (scipy's EDT with
    the anisotropic voxel size as reference), untouched elsewhere and on the annotated slices."""
    from scipy import ndimage

    from spatialsam.sdf import sdf_target

    vs = (10.0, 5.0, 5.0)
    z, y, x = np.mgrid[:12, :40, :40]
    mask = ((z - 6) * 10.0) ** 2 + ((y - 20) * 5.0) ** 2 + ((x - 20) * 5.0) ** 2 < 60.0 ** 2
    weight = np.full(mask.shape, 0.5, np.float32)
    weight[3] = 1.0
    cfg = _cfg(pseudo_band_nm=12.0)
    target = sdf_target(mask, vs, cfg.unet_truncation_nm())
    out = sdf_track_weight(weight, target, [3], cfg.pseudo_band_nm, cfg.unet_truncation_nm())
    h = 0.5 * min(vs)
    dist = np.where(mask, ndimage.distance_transform_edt(mask, sampling=vs) - h,
                    ndimage.distance_transform_edt(~mask, sampling=vs) - h)
    near = dist < 12.0
    near[3] = False
    assert near.any() and (~near).any()
    assert np.array_equal(out == 0, near)
    assert np.array_equal(out[~near], weight[~near])
    assert sdf_track_weight(weight, target, [3], 0.0, cfg.unet_truncation_nm()) is weight  # band 0: unchanged


def test_anchored_round_trains_and_improves(demo, tmp_path, monkeypatch):
    """A tiny run with the anchored SDF track (separate normalisation, boundary band) hands round 1's
    U-Net its annotated slices and banded weights, records its settings, and its round-1 U-Net beats
    round 0's."""
    from spatialsam import dualtrack
    from spatialsam.train_unet import TrainData

    seen = []
    monkeypatch.setattr(dualtrack, "TrainData", lambda *a, **kw: seen.append(TrainData(*a, **kw)) or seen[-1])
    img, gt = demo
    slices = [4, 11]
    labels = np.zeros_like(gt)
    labels[slices] = gt[slices]
    cfg = _cfg(pseudo_loss_weight=0.5, pseudo_band_nm=5.0)
    run_dualtrack(img, labels, slices, (5, 5, 5), cfg, tmp_path, progress=False, eval_mask=gt)
    assert len(seen) == 1 and seen[0].anchor_slices == (4, 11) and seen[0].pseudo_loss_weight == 0.5
    pseudo = np.load(tmp_path / "round_0" / "pseudo.npz")
    assert (seen[0].weight == 0).sum() > (pseudo["weight"] == 0).sum()  # the band
    rounds = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert rounds[1]["unet_iou"] > rounds[0]["unet_iou"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["pseudo_loss_weight"], saved["pseudo_band_nm"]) == (0.5, 5.0)


def test_pretrained_weights_start_round_0_and_are_declared(demo, tmp_path):
    """Optional pretrained weights (e.g. networks trained on other data) start round 0's two tracks and
    are declared in config.json; weights that do not fit, a propagator with the other memory kind, a
    pretrained U-Net next to a bootstrap run, and resuming from other weights are refused."""
    from spatialsam.atomic_files import sha256_file
    from spatialsam.propagator import build_propagator, load_propagator_config
    from spatialsam.train_propagator import TrainConfig as MaskTrainConfig
    from spatialsam.train_propagator import save_checkpoint
    from spatialsam.train_unet import build_model

    img, gt = demo
    slices = [4, 11]
    labels = np.zeros_like(gt)
    labels[slices] = gt[slices]
    other, other_ids = make_demo_volume((16, 64, 64), seed=9)
    cfg = _cfg(rounds=0, unet_overrides={**TINY_UNET, "lr": 0.0})  # lr 0: round 0's U-Net stays where it starts
    train_unet(make_train_data(other, other_ids > 0, (5, 5, 5)), _cfg().unet_train_config(0), tmp_path / "pre", progress=False)
    pre_unet = tmp_path / "pre" / "best.pt"
    for memory in ("sdf", "mask"):
        save_checkpoint(tmp_path / f"prop_{memory}.pt", build_propagator(load_propagator_config("tiny", memory=memory)),
                        None, 7, MaskTrainConfig(), [], {"data": "demo seed 9"})
    out = tmp_path / "a"
    run_dualtrack(img, labels, slices, (5, 5, 5), cfg, out, progress=False, pretrained_unet=pre_unet,
                  pretrained_propagator=tmp_path / "prop_sdf.pt")
    declared = json.loads((out / "config.json").read_text())["pretrained"]
    assert declared["unet"]["sha256"] == sha256_file(pre_unet) and declared["unet"]["path"] == str(pre_unet)
    assert declared["propagator"] == {"path": str(tmp_path / "prop_sdf.pt"), "sha256": sha256_file(tmp_path / "prop_sdf.pt"),
                                      "step": 7, "config": "tiny", "trained_on": "demo seed 9"}
    want = torch.load(pre_unet, weights_only=False)["model"]
    got = torch.load(out / "round_0" / "unet" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    # The default config is "compact": a tiny propagator in round 0 can only be the pretrained one.
    assert torch.load(out / "round_0" / "propagator" / "propagator_last.pt", weights_only=False)["propagator_config"]["name"] == "tiny"

    bad = tmp_path / "bad.pt"
    wide = _cfg(unet_overrides={**TINY_UNET, "unet": {"channels": [4, 8], "pool": [[2, 2, 2]], "norm": "none"}})
    torch.save({"model": build_model(wide.unet_train_config(0)).state_dict()}, bad)
    for kw, message in (
        ({"pretrained_unet": bad}, "pretrained_unet: .* does not fit"),
        ({"pretrained_unet": tmp_path / "missing.pt"}, "pretrained_unet: .* not found"),
        ({"pretrained_propagator": tmp_path / "prop_mask.pt"}, "pretrained_propagator: .* 'mask' memory"),
        ({"pretrained_unet": pre_unet, "bootstrap_unet": tmp_path / "pre"}, "pretrained_unet: not with bootstrap_unet"),
    ):
        with pytest.raises(ValueError, match=message):
            run_dualtrack(img, labels, slices, (5, 5, 5), cfg, tmp_path / "b", progress=False, **kw)
    with pytest.raises(ValueError, match="pretrained_unet: .* was started from pretrained weights"):
        run_dualtrack(img, labels, slices, (5, 5, 5), cfg, out, progress=False)


def test_crops_are_checked_before_training_and_the_mask_crop_fits_small_slices(tmp_path):
    """A box narrower than the mask track's 128 px crop trains with the crop shrunk to the slice (a
    multiple of 16); one smaller than the SDF track's crop, or slices under 32 px, are refused before
    anything trains."""
    img, ids = make_demo_volume((16, 96, 80), seed=4)
    slices = [4, 11]
    labels = np.zeros(ids.shape, bool)
    labels[slices] = ids[slices] > 0
    cfg = _cfg(rounds=0, mask_crop=128, bootstrap_unet_steps=2)
    assert run_dualtrack(img, labels, slices, (5, 5, 5), cfg, tmp_path / "ok", progress=False)["rounds"] == 1
    ck = torch.load(tmp_path / "ok" / "round_0" / "propagator" / "propagator_last.pt", weights_only=False)
    assert ck["train_config"]["crop"] == 80
    with pytest.raises(ValueError, match="smaller than the SDF track's training crop"):
        run_dualtrack(img[:6], labels[:6], [4], (5, 5, 5), cfg, tmp_path / "thin", progress=False)
    with pytest.raises(ValueError, match="too small for the mask track"):
        run_dualtrack(img[:, :48, :28], labels[:, :48, :28], slices, (5, 5, 5),
                      _cfg(rounds=0, unet_overrides={**TINY_UNET, "crop_zyx": (8, 16, 16)}), tmp_path / "narrow", progress=False)
    assert not (tmp_path / "thin").exists() and not (tmp_path / "narrow").exists()
