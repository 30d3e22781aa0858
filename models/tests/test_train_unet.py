"""U-Net training: the loss goes down, resume after a kill equals an uninterrupted run, bad input."""

import json

import numpy as np
import pytest
import torch

from spatialsam.data import make_demo_volume
from spatialsam.train_unet import (
    TrainConfig,
    TrainData,
    ValData,
    load_unet,
    make_train_data,
    scheduled_lr,
    train_unet,
)

TINY = {"channels": [4, 8], "pool": [[2, 2, 2]]}


@pytest.fixture(scope="module")
def demo():
    img, lab = make_demo_volume((16, 48, 48), seed=0)
    return img, lab > 0


def _cfg(**kw):
    base = dict(unet=TINY, crop_zyx=(8, 32, 32), batch_size=1, lr=5e-3, log_every=1, checkpoint_every=3, threads=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_training_lowers_the_loss(demo, tmp_path):
    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5))
    out = train_unet(data, _cfg(max_steps=40, val_every=20), tmp_path, val=ValData(img, mask), progress=False)
    log = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss_sdf"] + r["loss_sign"] for r in log if "loss_sdf" in r]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    assert out["stopped"] == "max_steps" and out["best_step"] in (20, 40)
    assert [r["step"] for r in log if "val_fg_iou" in r] == [20, 40]
    model = load_unet(tmp_path / "best.pt")
    assert model.cfg.channels == (4, 8)


# loader threads: crops per step, any count; channels-last weights survive the checkpoint
@pytest.mark.parametrize("threads, killed_threads, channels_last", [(0, 0, False), (2, 1, False), (0, 0, True)])
def test_resume_after_kill_matches_uninterrupted_run(demo, tmp_path, threads, killed_threads, channels_last):
    img, mask = demo
    slices = [4, 11]
    data = make_train_data(img, mask, (5, 5, 5), slices)
    cfg = _cfg(max_steps=8, loader_threads=threads, channels_last=channels_last)
    train_unet(data, cfg, tmp_path / "a", progress=False)
    killed = train_unet(data, _cfg(max_steps=8, loader_threads=killed_threads, channels_last=channels_last), tmp_path / "b",
                        progress=False, _kill_at_step=5)
    assert killed["stopped"] == "killed"
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["state"]["step"] == 3
    train_unet(data, cfg, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["state"]["step"] == b["state"]["step"] == 8
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    assert [r["loss_sdf"] for r in log_a] == [r["loss_sdf"] for r in log_b]


def test_sparse_targets_only_on_annotated_slices(demo):
    img, mask = demo
    d = make_train_data(img, mask, (5, 5, 5), [3])
    assert np.array_equal(np.flatnonzero(d.weight.sum(axis=(1, 2))), [3])
    assert np.array_equal(d.target_sdf[3] > 0, mask[3])


def test_bad_inputs(demo, tmp_path):
    img, mask = demo
    with pytest.raises(ValueError, match="annotated_slices: empty"):
        make_train_data(img, mask, (5, 5, 5), [])
    with pytest.raises(ValueError, match="mask"):
        make_train_data(img, mask[:-1], (5, 5, 5))
    with pytest.raises(ValueError, match="target_sdf: contains NaN"):
        TrainData(img, np.full(img.shape, np.nan, np.float32), np.ones(img.shape, np.float32))
    with pytest.raises(ValueError, match="weight: all zero"):
        TrainData(img, np.zeros(img.shape, np.float32), np.zeros(img.shape, np.float32))
    with pytest.raises(ValueError, match="image"):
        train_unet(make_train_data(img, mask, (5, 5, 5)), _cfg(crop_zyx=(7, 32, 32)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="model"):
        TrainConfig(model="unet4d")


def test_sigterm_stops_cleanly_with_a_checkpoint(demo, tmp_path):
    import os
    import signal

    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5))
    # The validation callback plays the deadline: SIGTERM arrives during step 2's validation, the
    # run ends after the next step with a final validation and a checkpoint.
    out = train_unet(data, _cfg(max_steps=50, val_every=2), tmp_path, val=ValData(img, mask), progress=False,
                     on_validation=lambda step, iou: os.kill(os.getpid(), signal.SIGTERM))
    assert out["stopped"] == "sigterm" and out["step"] == 3
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["state"]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_foreground_centred_crops_contain_foreground(demo):
    from spatialsam.train_unet import _batch, _foreground_voxels

    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5))
    fg = _foreground_voxels(data)
    assert len(fg) and mask[tuple(fg.T)].all()
    cfg = _cfg(batch_size=8, fg_crop_fraction=1.0, augment=False)
    _, tgt, _ = _batch(data, cfg, np.random.default_rng(0), data.weight.sum(axis=(1, 2)), fg)
    assert all((t > 0).any() for t in tgt)


def test_cpu_budget_stops_the_run_and_is_recorded(demo, tmp_path):
    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5))
    out = train_unet(data, _cfg(max_steps=10_000, max_cpu_s=0.5), tmp_path, progress=False)
    assert out["stopped"] == "max_cpu" and out["cpu_s"] >= 0.5 and out["step"] < 10_000
    log = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r["cpu_s"] <= out["cpu_s"] + 0.05 for r in log)  # summary rounds to 0.1 s, the log to 0.01 s
    # a resumed run keeps counting from the checkpoint's CPU time instead of starting over
    again = train_unet(data, _cfg(max_steps=10_000, max_cpu_s=0.5), tmp_path, progress=False)
    assert again["step"] - out["step"] <= 1
    # a larger budget continues the run, and config.json records the budget in force
    more = train_unet(data, _cfg(max_steps=again["step"] + 2, max_cpu_s=1e6), tmp_path, progress=False)
    assert more["stopped"] == "max_steps" and more["step"] == again["step"] + 2
    assert json.loads((tmp_path / "config.json").read_text())["max_cpu_s"] == 1e6


def test_ema_and_bf16_resume_matches_uninterrupted_run(demo, tmp_path):
    """The weight average is checkpointed with the model: a killed and resumed run ends with the same
    average (and best.pt holds the average, not the last weights)."""
    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5), [4, 11])
    cfg = _cfg(max_steps=8, ema_decay=0.9, amp="bf16")
    train_unet(data, cfg, tmp_path / "a", progress=False)
    train_unet(data, cfg, tmp_path / "b", progress=False, _kill_at_step=5)
    train_unet(data, cfg, tmp_path / "b", progress=False)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for k in a["ema"]:
        torch.testing.assert_close(a["ema"][k], b["ema"][k], rtol=0, atol=0)
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(best[k], a["ema"][k]) for k in best)
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in best)
    with pytest.raises(ValueError, match="ema_decay"):
        _cfg(ema_decay=1.0)
    with pytest.raises(ValueError, match="amp"):
        _cfg(amp="fp16")


def test_cosine_schedule_decays_to_zero_and_resumes_on_it(demo, tmp_path):
    """lr_schedule "cosine": lr * (1 + cos(pi t / T)) / 2 at step t; the optimizer steps with it
    (a run ends on other weights than a constant-rate run from the same crops) and a killed run
    resumes on the same curve."""
    cfg = _cfg(max_steps=8, lr_schedule="cosine")
    assert scheduled_lr(cfg, 0) == pytest.approx(5e-3)
    assert scheduled_lr(cfg, 4) == pytest.approx(2.5e-3)
    assert scheduled_lr(cfg, 6) == pytest.approx(5e-3 * (1 - np.sqrt(0.5)) / 2)
    assert scheduled_lr(cfg, 8) == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(_cfg(max_steps=8), 6) == 5e-3
    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5), [4, 11])
    train_unet(data, cfg, tmp_path / "cos", progress=False)
    train_unet(data, _cfg(max_steps=8), tmp_path / "const", progress=False)
    train_unet(data, cfg, tmp_path / "killed", progress=False, _kill_at_step=5)
    train_unet(data, cfg, tmp_path / "killed", progress=False)
    cos, const, killed = (torch.load(tmp_path / n / "checkpoint.pt", weights_only=False) for n in ("cos", "const", "killed"))
    assert cos["optimizer"]["param_groups"][0]["lr"] == pytest.approx(scheduled_lr(cfg, 7))
    assert const["optimizer"]["param_groups"][0]["lr"] == 5e-3
    assert any(not torch.equal(cos["model"][k], const["model"][k]) for k in cos["model"])
    for k in cos["model"]:
        torch.testing.assert_close(cos["model"][k], killed["model"][k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="lr_schedule"):
        _cfg(lr_schedule="step")


def test_border_crops_overhang_the_volume_with_zero_weight(demo):
    """Crops that overhang a face: zero input and zero weight outside the volume, the volume's own
    values inside; none of them reaches more than half a crop out."""
    from spatialsam.train_unet import _batch

    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5))
    cfg = _cfg(batch_size=8, border_crop_fraction=1.0, augment=False, fg_crop_fraction=0.0)
    rng = np.random.default_rng(0)
    outside = 0
    for _ in range(4):
        x, t, w = _batch(data, cfg, rng, data.weight.sum(axis=(1, 2), dtype=np.float64), np.zeros((0, 3), np.int64))
        for k in range(x.shape[0]):
            zero_w = w[k, 0] == 0
            assert zero_w.any() and not zero_w.all()
            assert float(x[k, 0][zero_w].abs().max()) == 0.0
            outside += int(zero_w.sum())
    assert outside > 0


def _z_coded(shape=(16, 40, 40), slices=(4, 11)):
    """TrainData whose image value is the z index (so a crop tells where it came from), annotated
    slices weighted 1 and pseudo-labels 0.5 elsewhere."""
    img = np.broadcast_to(np.arange(shape[0], dtype=np.uint8)[:, None, None], shape).copy()
    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, shape).astype(np.float32)
    weight = np.full(shape, 0.5, np.float32)
    weight[list(slices)] = 1.0
    return TrainData(img, target, weight, 0.0, 1 / 255, anchor_slices=slices)


def test_anchored_crops_mark_the_annotated_slices():
    """With anchor_slices the batch carries a 4th tensor, 1 exactly on the annotated slices of each crop
    (also after flips), and with anchor_crop_fraction 1 every crop holds one."""
    from spatialsam.train_unet import _Anchors, _batch, _foreground_voxels

    data = _z_coded()
    data.anchor_crop_fraction = 1.0
    fg = _foreground_voxels(data)
    anchors = _Anchors.of(data, fg)
    assert np.isin(anchors.fg[:, 0], data.anchor_slices).all() and len(anchors.fg)
    cfg = _cfg(batch_size=8, fg_crop_fraction=0.5, augment=True)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, _, w, anchor = _batch(data, cfg, rng, data.weight.sum(axis=(1, 2), dtype=np.float64), fg, anchors)
        z = torch.round(x[:, 0, :, 0, 0]).long()  # image value = z (mean 0, std 1/255)
        expect = torch.isin(z, torch.tensor(data.anchor_slices))
        assert torch.equal(anchor[:, 0, :, 0, 0] > 0, expect)
        assert expect.any(dim=1).all()
        assert torch.equal(anchor[:, 0] > 0, (w[:, 0] == 1.0))  # only annotated voxels have weight 1 here
    # Without anchor_slices the batch stays (image, target, weight).
    plain = TrainData(data.image, data.target_sdf, data.weight, 0.0, 1 / 255)
    assert len(_batch(plain, cfg, rng, plain.weight.sum(axis=(1, 2), dtype=np.float64), fg)) == 3


def test_anchored_loss_gives_the_annotated_voxels_a_fixed_share():
    """L = L(annotated) + k * L(pseudo), each normalised on its own: the gradient on annotated voxels
    does not shrink when more (or more heavily weighted) pseudo-labelled voxels share the crop, as it
    does under one normalisation."""
    from spatialsam.losses import unet_loss
    from spatialsam.train_unet import _anchored_loss

    g = torch.Generator().manual_seed(0)
    shape = (2, 1, 8, 16, 16)
    tgt = torch.rand(shape, generator=g) * 2 - 1
    anchor = torch.zeros(shape)
    anchor[:, :, 3] = 1
    w = torch.rand(shape, generator=g)
    cfg = _cfg()

    pred = torch.rand(shape, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def grads(weight, anchored):
        sdf = pred.clone().requires_grad_()
        fg = torch.zeros(shape, requires_grad=True)
        if anchored:
            loss, _ = _anchored_loss(sdf, fg, tgt, weight, anchor, cfg, 0.5)
        else:
            loss, _ = unet_loss(sdf, fg, tgt, weight)
        loss.backward()
        return loss.detach(), sdf.grad[:, :, 3]

    heavy = w * anchor + 50 * w * (1 - anchor)
    la, ga = grads(w, True)
    _, gh = grads(heavy, True)
    torch.testing.assert_close(ga, gh)  # the annotated slice's gradient ignores the pseudo part's scale
    ann, _ = unet_loss(pred, torch.zeros(shape), tgt, w * anchor)
    pse, _ = unet_loss(pred, torch.zeros(shape), tgt, w * (1 - anchor))
    torch.testing.assert_close(la, ann + 0.5 * pse)
    _, g1 = grads(w, False)
    _, g2 = grads(heavy, False)
    assert float(g2.abs().sum()) < 0.1 * float(g1.abs().sum())  # one normalisation: diluted 50x


def test_anchor_bad_inputs():
    data = _z_coded()
    with pytest.raises(ValueError, match="annotated_slices: indices"):
        TrainData(data.image, data.target_sdf, data.weight, anchor_slices=(3, 99))
    w = data.weight.copy()
    w[4] = 0
    with pytest.raises(ValueError, match="anchor_slices: no weight"):
        TrainData(data.image, data.target_sdf, w, anchor_slices=(4,))
    with pytest.raises(ValueError, match="pseudo_loss_weight"):
        TrainData(data.image, data.target_sdf, data.weight, anchor_slices=(4,), pseudo_loss_weight=1.5)


def test_loader_threads_cut_the_same_crops_for_any_thread_count(demo):
    from spatialsam.train_unet import _Anchors, _batch_arrays, _foreground_voxels, _Loader

    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5), [4, 11])
    slice_w = data.weight.sum(axis=(1, 2), dtype=np.float64)
    fg = _foreground_voxels(data)
    got = {}
    for threads in (1, 3):
        cfg = _cfg(max_steps=7, loader_threads=threads, batch_size=2, intensity_augment=0.5, border_crop_fraction=0.3)
        loader = _Loader(data, cfg, slice_w, fg, _Anchors.of(data, fg), 2)  # a run resumed at step 2
        got[threads] = [tuple(t.numpy() for t in loader.batch(k)) for k in range(2, 7)]
        loader.close()
    for k, (one, three) in enumerate(zip(got[1], got[3]), start=2):
        ref = _batch_arrays(data, cfg, np.random.default_rng([cfg.seed, k]), slice_w, fg, None)
        for a, b, r in zip(one, three, ref):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a[:, 0], r)
    assert not np.array_equal(got[1][0][0], got[1][1][0])  # steps differ from each other
    with pytest.raises(ValueError, match="loader_threads: must be an integer >= 0"):
        _cfg(loader_threads=-1)



@pytest.mark.parametrize("model, unet, crop", [("unet3d", TINY, (8, 32, 32)),
                                               ("unet2d", {"channels": [4, 8], "pool": [[2, 2]]}, (1, 32, 32))])
def test_channels_last_trains_in_that_layout_and_learns_the_same(demo, tmp_path, monkeypatch, model, unet, crop):
    """channels_last: the convolutions' weights are channels-last while the net trains (oneDNN then
    keeps its activations so on inputs as large as the Lucchi crops); the run follows the contiguous
    run of the same seed to rounding (the same arithmetic in another order), and its best.pt loads
    into a plain model that predicts what the trained weights do."""
    import spatialsam.train_unet as tu

    img, mask = demo
    data = make_train_data(img, mask, (5, 5, 5), [4, 11])
    fmt = torch.channels_last_3d if model == "unet3d" else torch.channels_last
    layouts = []
    real = tu.build_model

    def build(cfg):
        m = real(cfg)
        conv = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv3d, torch.nn.Conv2d)) and mod.in_channels > 1][0]
        conv.register_forward_hook(lambda _m, _i, _o: layouts.append(_m.weight.is_contiguous(memory_format=fmt))
                                   if _m.training else None)
        return m

    monkeypatch.setattr(tu, "build_model", build)
    runs = {}
    for cl in (False, True):
        layouts.clear()
        cfg = _cfg(model=model, unet=unet, crop_zyx=crop, max_steps=6, channels_last=cl, ema_decay=0.5)
        out = train_unet(data, cfg, tmp_path / str(cl), progress=False)
        assert out["step"] == 6 and len(layouts) == 6 and set(layouts) == {cl}
        runs[cl] = torch.load(tmp_path / str(cl) / "checkpoint.pt", weights_only=False)
    for k, v in runs[False]["model"].items():
        torch.testing.assert_close(runs[True]["model"][k], v, rtol=1e-3, atol=1e-4)
    net = load_unet(tmp_path / "True" / "best.pt").eval()
    ref = real(TrainConfig(model=model, unet=unet)).to(memory_format=fmt)
    ref.load_state_dict(runs[True]["ema"])
    x = torch.randn(1, 1, *(crop if model == "unet3d" else crop[1:]))
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], ref.eval()(x.contiguous(memory_format=fmt))[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="channels_last: must be true or false"):
        _cfg(channels_last="yes")
