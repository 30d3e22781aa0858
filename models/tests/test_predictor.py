"""Reference predictor lifecycle (add prompts, propagate forward/backward/both, remove, reset),
automatic mode, volume-wide propagation and bad inputs."""

import numpy as np
import pytest
import torch

from spatialsam.predictor import Predictor, fill_from_sdf, propagate_volume, sdf_seeds, segment_volume
from spatialsam.propagator import build_propagator

torch.set_num_threads(1)
Z, Y, X = 10, 48, 64


@pytest.fixture(scope="module")
def model():
    return build_propagator("tiny").eval()


@pytest.fixture()
def vol():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (Z, Y, X), dtype=np.uint8)
    zz, yy, xx = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    d = 10 - np.sqrt((yy - 24.0) ** 2 + (xx - 20.0) ** 2)  # a tube along z, radius 10 px
    sdf = np.clip(d / 20, -1, 1).astype(np.float32)
    return image, sdf


def test_add_prompts_returns_masks_of_every_object_on_the_slice(model, vol):
    pred = Predictor(model)
    st = pred.init_state(*vol)
    assert st.padded_hw == (48, 64)
    out = pred.add_prompts(st, 3, 11, points=[[20, 24]], labels=[1])
    assert set(out) == {11} and out[11].shape == (Y, X) and out[11].dtype == bool
    out = pred.add_prompts(st, 3, 4, box=[30, 5, 60, 40])
    assert set(out) == {11, 4}
    assert st.obj_index(11) == 0 and st.obj_index(4) == 1
    # clicks accumulate; clear_old starts the slice's prompts over
    pred.add_prompts(st, 3, 11, points=[[5, 5]], labels=[0])
    assert st.objects[11].prompts[3].points.shape == (2, 2)
    pred.add_prompts(st, 3, 11, points=[[22, 22]], labels=[1], clear_old=True)
    assert st.objects[11].prompts[3].points.tolist() == [[22.0, 22.0]]


def test_mask_prompt_alone_is_the_output(model, vol):
    pred = Predictor(model)
    st = pred.init_state(*vol)
    m = np.zeros((Y, X), bool)
    m[10:30, 5:25] = True
    out = pred.add_prompts(st, 5, 1, mask=m)
    assert np.array_equal(out[1], m)


def test_propagate_directions_and_max_slices(model, vol):
    pred = Predictor(model)
    st = pred.init_state(*vol)
    pred.add_prompts(st, 4, 1, points=[[20, 24]], labels=[1])
    pred.add_prompts(st, 6, 2, points=[[40, 10]], labels=[1])
    fwd = list(pred.propagate(st, direction="forward"))
    assert [z for z, _ in fwd] == list(range(4, Z))  # default start: lowest prompted slice
    assert all(set(m) == {1, 2} for _, m in fwd)
    bwd = [z for z, _ in pred.propagate(st, direction="backward")]
    assert bwd == list(range(6, -1, -1))  # default start: highest prompted slice
    both = [z for z, _ in pred.propagate(st, start_z=5, direction="both", max_slices=3)]
    assert both == [5, 6, 7, 5, 4, 3]
    # prompted slices keep their prompted output, never overwritten by propagation
    t = st.objects[1]
    assert 4 in t.cond and 4 not in t.noncond and set(t.noncond) == set(range(Z)) - {4}


def test_propagation_is_deterministic_and_batch_independent(model, vol):
    """Objects are batched per slice; each object's masks equal a session holding it alone."""
    def run(ids):
        pred = Predictor(model)
        st = pred.init_state(*vol)
        if 1 in ids:
            pred.add_prompts(st, 2, 1, points=[[20, 24]], labels=[1])
        if 2 in ids:
            pred.add_prompts(st, 7, 2, box=[30, 5, 60, 40])
        res = {}
        for z, _ in pred.propagate(st, start_z=0, direction="forward"):
            for oid in ids:
                res[(oid, z)] = pred.mask_logits(st, oid, z)
        return res

    both, alone = run([1, 2]), run([1])
    for z in range(Z):
        np.testing.assert_allclose(both[(1, z)], alone[(1, z)], atol=1e-4)


def test_remove_object_and_reset(model, vol):
    pred = Predictor(model)
    st = pred.init_state(*vol)
    pred.add_prompts(st, 4, 1, points=[[20, 24]], labels=[1])
    pred.add_prompts(st, 4, 2, points=[[40, 10]], labels=[1])
    list(pred.propagate(st, max_slices=2))
    assert pred.remove_object(st, 1) == [2]
    assert st.obj_index(2) == 0
    assert all(set(m) == {2} for _, m in pred.propagate(st, max_slices=2))
    with pytest.raises(ValueError, match="obj_id"):
        pred.remove_object(st, 1)
    n_feat = len(st.features)
    pred.reset_state(st)
    assert not st.objects and len(st.features) == n_feat
    with pytest.raises(ValueError, match="state"):
        next(pred.propagate(st))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"points": [[70, 5]], "labels": [1]}, "points"),  # x outside the slice
        ({"points": [[5, -1]], "labels": [1]}, "points"),
        ({"points": [[np.nan, 5]], "labels": [1]}, "points"),
        ({"points": [[5, 5]], "labels": [1, 0]}, "labels"),
        ({"points": [[5, 5]], "labels": [2]}, "labels"),
        ({}, "points"),  # empty prompt
        ({"box": [10, 10, 5, 20]}, "box"),
        ({"box": [0, 0, np.inf, 5]}, "box"),
        ({"mask": np.ones((5, 5), bool)}, "mask"),
    ],
)
def test_bad_prompts_name_the_argument(model, vol, kwargs, field):
    pred = Predictor(model)
    st = pred.init_state(*vol)
    with pytest.raises(ValueError, match=f"^{field}"):
        pred.add_prompts(st, 1, 1, **kwargs)
    assert not st.objects  # a rejected prompt leaves no trace


def test_bad_session_inputs(model, vol):
    image, sdf = vol
    pred = Predictor(model)
    with pytest.raises(ValueError, match="^sdf"):
        pred.init_state(image, sdf[:, :-1])
    with pytest.raises(ValueError, match="^sdf"):
        bad = sdf.copy()
        bad[0, 0, 0] = np.nan
        pred.init_state(image, bad)
    with pytest.raises(ValueError, match="^image"):
        pred.init_state(image.astype(np.float32), sdf)
    st = pred.init_state(image, sdf)
    with pytest.raises(ValueError, match="^z"):
        pred.add_prompts(st, Z, 1, points=[[1, 1]], labels=[1])
    with pytest.raises(ValueError, match="^obj_id"):
        pred.add_prompts(st, 0, "a", points=[[1, 1]], labels=[1])
    pred.add_prompts(st, 0, 1, points=[[1, 1]], labels=[1])
    with pytest.raises(ValueError, match="^direction"):
        next(pred.propagate(st, direction="sideways"))
    with pytest.raises(ValueError, match="^start_z"):
        next(pred.propagate(st, start_z=-1))


def test_sdf_seeds_pick_the_deepest_point(vol):
    _, sdf = vol
    seeds = sdf_seeds(sdf)
    assert len(seeds) == 1
    z, x, y, box = seeds[0]
    assert (x, y) == (20.0, 24.0)
    assert box.tolist() == [11.0, 15.0, 29.0, 33.0]


def test_segment_volume_and_propagate_volume(model, vol):
    image, sdf = vol
    inst = segment_volume(model, image, sdf, crop=32)
    assert inst.dtype == np.uint64 and inst.shape == image.shape
    assert set(np.unique(inst)) <= {0, 1}
    labels = (sdf > 0).astype(np.uint8)
    prob = propagate_volume(model, image, sdf, [3], labels, crop=32)
    assert prob.dtype == np.float32 and prob.shape == image.shape
    assert ((prob >= 0) & (prob <= 1)).all()
    assert np.array_equal(prob[3], labels[3].astype(np.float32))
    with pytest.raises(ValueError, match="^labels"):
        propagate_volume(model, image, sdf, [3], labels[:, :-1])
    with pytest.raises(ValueError, match="^annotated_slices"):
        propagate_volume(model, image, sdf, [], labels)


def test_propagate_volume_in_lockstep_batches_matches_one_object_at_a_time(vol, monkeypatch):
    """Objects of an annotated slice are followed as a batch; each keeps its own window, bank and
    stopping rule, so the result is that of the per-object reference loop (_propagate_object)."""
    from scipy import ndimage
    from scipy.special import expit

    from spatialsam.predictor import _crop_window, _propagate_object

    model = build_propagator("tiny").eval()
    with torch.no_grad():  # a bias so that objects are followed for a while, not dropped at once
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    image, _ = vol
    zz, yy, xx = np.meshgrid(np.arange(Z), np.arange(Y), np.arange(X), indexing="ij")
    labels = np.zeros(image.shape, np.uint8)
    for cy, cx, r in ((10, 10, 5), (12, 40, 7), (36, 20, 4), (34, 52, 9)):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    labels[(zz > 6) & (yy > 24)] = 0  # objects end at different depths
    labels[:, 20:48, 56:64] |= (zz[:, 20:48, 56:64] < 5)  # a tall one (a wider window) on slice 3 only
    sdf = np.where(labels > 0, 0.5, -0.5).astype(np.float32)
    sdf[::2] *= -1  # flickering memory: some objects are lost and stop early
    ref = np.zeros(image.shape, np.float32)
    pred = Predictor(model)
    stops = set()
    for z0 in (3, 6):
        comps, _ = ndimage.label(labels[z0] > 0)
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            win = _crop_window(((sl[0].start + sl[0].stop) / 2, (sl[1].start + sl[1].stop) / 2),
                               (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), image.shape[1:], 24, model.stride)
            out = _propagate_object(pred, image, sdf, z0, win, {"mask": (comps == i)[win]}, 2)
            stops.add((min(out), max(out)))
            for z, lg in out.items():
                np.maximum(ref[z, win[0], win[1]], expit(lg), out=ref[z, win[0], win[1]])
    for z0 in (3, 6):
        ref[z0] = labels[z0]
    assert len(stops) > 1  # the objects stop on different slices: the lockstep must too
    import spatialsam.predictor as predictor_module

    real_step, cached = predictor_module._lockstep_step, []

    def step(pred, states, zs, d):
        out = real_step(pred, states, zs, d)
        cached.append(max(len(st.features) for st in states))
        return out

    monkeypatch.setattr(predictor_module, "_lockstep_step", step)
    for limit in (None, 3):  # the features a batch holds are bounded; evicting them changes nothing
        if limit:
            monkeypatch.setattr(predictor_module, "_lockstep_predictor",
                                lambda m, limit=limit: Predictor(m, feature_cache_slices=limit))
        for batch in (64, 2):
            cached.clear()
            prob = propagate_volume(model, image, sdf, [3, 6], labels, crop=24, patience=2, batch=batch)
            np.testing.assert_allclose(prob, ref, atol=1e-5)
            assert cached and max(cached) <= (limit or max(model.cfg.num_recent, model.cfg.max_ptrs) + 2)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="^batch"):
        propagate_volume(model, image, sdf, [3], labels, batch=0)
    # Automatic mode: seeds on different slices, in lockstep too; voxels go to the highest logit.
    from spatialsam.predictor import _seed_prompt
    from spatialsam.train_propagator import TrainConfig, train_mask_track

    blobs = np.zeros(image.shape, bool)
    for cz, cy, cx, r in ((2, 10, 10, 6), (5, 12, 40, 7), (7, 36, 20, 5), (4, 34, 52, 8)):
        blobs |= ((zz - cz) * 2.5) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    auto_sdf = np.where(blobs, 0.5, -0.5).astype(np.float32)
    model = build_propagator("tiny")  # a few steps on the blobs, so that seeds grow masks that overlap
    train_mask_track(model, image, auto_sdf, ndimage.label(blobs)[0].astype(np.uint8), None,
                     TrainConfig(steps=30, batch_size=2, crop=32, run_length=3, lr=3e-3, teacher_forcing=1.0, min_area=4))
    model.eval()
    pred = Predictor(model)
    seeds = sdf_seeds(auto_sdf, min_voxels=8)
    assert len({z for z, *_ in seeds}) > 1
    best, ref_inst = np.zeros(image.shape, np.float32), np.zeros(image.shape, np.uint64)
    for k, (z, x, y, box) in enumerate(seeds, start=1):
        win, prompt = _seed_prompt(box, x, y, image.shape[1:], 24, model.stride)
        for zz_, lg in _propagate_object(pred, image, auto_sdf, z, win, prompt, 2).items():
            b, o = best[zz_, win[0], win[1]], ref_inst[zz_, win[0], win[1]]
            take = lg > b
            b[take], o[take] = lg[take], k
    assert len(np.unique(ref_inst)) == len(seeds) + 1
    for batch in (64, 2):
        inst = segment_volume(model, image, auto_sdf, min_voxels=8, crop=24, patience=2, batch=batch, fill=False)
        assert np.array_equal(inst, ref_inst)
    # fill: the blobs' voxels no mask reached go to the blob's own seed (seed k is blob k here, every
    # blob being one component of >= 8 voxels, numbered like the seeds); all else stays as propagated.
    comps, n = ndimage.label(blobs)
    assert n == len(seeds)
    holes = (ref_inst == 0) & blobs
    assert holes.any()
    want = ref_inst.copy()
    want[holes] = comps[holes]
    assert np.array_equal(segment_volume(model, image, auto_sdf, min_voxels=8, crop=24, patience=2), want)
    assert np.array_equal(fill_from_sdf(ref_inst, auto_sdf, min_voxels=8), want)
    with pytest.raises(ValueError, match="^inst"):
        fill_from_sdf(ref_inst.astype(np.int64), auto_sdf)


def test_evaluate_tracking_scores_a_perfect_and_an_empty_tracker(model, vol):
    from spatialsam.predictor import evaluate_tracking

    image, sdf = vol
    res = evaluate_tracking(model, image, sdf, sdf > 0, crop=32, min_slices=3)
    assert res["objects"] == 1 and 0.0 <= res["mean_iou_3d"] <= 1.0 and 0.0 <= res["mean_slice_iou"] <= 1.0
    assert evaluate_tracking(model, image, sdf, np.zeros_like(sdf, bool))["objects"] == 0


def test_evaluate_clicks_counts_objects_whole_slices_and_windows(model, vol):
    from spatialsam.predictor import evaluate_clicks

    image, sdf = vol
    labels = np.zeros(image.shape, np.uint64)
    labels[:, 20:30, 10:20] = 3
    labels[2:6, 30:40, 40:50] = 8  # on slices 2-5 beside 3: a neighbour for negative clicks
    for kw in ({}, {"window": 32}):
        res = evaluate_clicks(model, image, sdf, labels, **kw)
        assert res["objects"] == 2
        assert 0.0 <= res["min_iou_3d"] <= res["mean_iou_3d"] <= 1.0
        assert 0.0 <= res["mean_share_on_other_objects"] <= 1.0
    assert evaluate_clicks(model, image, sdf, labels, object_ids=[8])["objects"] == 1
    # 3's largest cross-section is the first of its equal ones, slice 0, where 8 is absent: skipped.
    assert evaluate_clicks(model, image, sdf, labels, negative_on_neighbour=True)["objects"] == 1
    lone = np.where(labels == 3, labels, 0)
    assert evaluate_clicks(model, image, sdf, lone, negative_on_neighbour=True)["objects"] == 0
