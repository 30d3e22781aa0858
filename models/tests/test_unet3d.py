"""3D U-Net: shapes, dtypes, output ranges, receptive field and seamless blockwise inference."""

import pytest
import torch

from spatialsam.unet3d import UNetConfig, build_unet3d, check_input_shape, context_zyx, predict_volume, receptive_field

TINY = UNetConfig(channels=(2, 4, 8), pool=((1, 2, 2), (2, 2, 2)))


def test_shapes_dtypes_and_ranges():
    torch.manual_seed(0)
    m = build_unet3d(TINY).eval()
    x = torch.randn(2, 1, 4, 16, 24)
    sdf, fg = m(x)
    assert sdf.shape == fg.shape == (2, 1, 4, 16, 24)
    assert sdf.dtype == fg.dtype == torch.float32
    assert sdf.abs().max() < 1


def test_anisotropic_size_multiple_and_bad_shapes():
    assert TINY.size_multiple() == (2, 4, 4)
    check_input_shape(TINY, (4, 8, 12))
    with pytest.raises(ValueError, match="image"):
        check_input_shape(TINY, (3, 8, 12))
    with pytest.raises(ValueError, match="pool"):
        UNetConfig(channels=(2, 4), pool=())
    with pytest.raises(ValueError, match="norm"):
        UNetConfig(norm="group")


def _gradient_extent(cfg, shape):
    """Per axis, how many input voxels the central output voxel's foreground logit depends on."""
    m = build_unet3d(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # positive weights: no accidental cancellation in the gradient
            p.copy_(p.abs() + 0.01)
    x = torch.randn(1, 1, *shape, requires_grad=True)
    _, fg = m(x)
    fg[(0, 0, *(s // 2 for s in shape))].backward()
    nz = x.grad[0, 0].abs() > 0
    return [int(nz.any(dim=tuple(d for d in range(3) if d != a)).sum()) for a in range(3)]


def test_receptive_field_matches_gradient_support():
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(2, 4, 8), pool=((1, 2, 2), (2, 2, 2)), norm="none")
    extent = _gradient_extent(cfg, (40, 64, 64))
    rf = receptive_field(cfg)
    assert all(e <= r for e, r in zip(extent, rf)), (extent, rf)
    assert all(e >= r - 4 for e, r in zip(extent, rf)), (extent, rf)
    assert all(c * 2 >= r for c, r in zip(context_zyx(cfg), rf))


def test_blockwise_prediction_is_seamless():
    torch.manual_seed(1)
    m = build_unet3d(UNetConfig(channels=(2, 4), pool=((1, 2, 2),), convs_per_block=1)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2)
    img = torch.randn(6, 14, 16)
    a_sdf, a_fg = predict_volume(m, img, block_zyx=(4, 8, 8))  # 2 x 2 x 2 blocks, last ones partial
    b_sdf, b_fg = predict_volume(m, img, block_zyx=(6, 14, 16))
    assert a_sdf.shape == img.shape
    torch.testing.assert_close(a_sdf, b_sdf, atol=1e-5, rtol=0)
    torch.testing.assert_close(a_fg, b_fg, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="image: contains NaN"):
        predict_volume(m, torch.full((4, 8, 8), float("nan")))


def test_stem_runs_coarse_and_returns_full_resolution():
    cfg = UNetConfig(channels=(2, 4), pool=((2, 2, 2),), norm="none", stem=(2, 2, 2))
    assert cfg.size_multiple() == (4, 4, 4)
    torch.manual_seed(0)
    m = build_unet3d(cfg).eval()
    sdf, fg = m(torch.randn(1, 1, 8, 16, 12))
    assert sdf.shape == fg.shape == (1, 1, 8, 16, 12)
    with pytest.raises(ValueError, match="stem"):
        UNetConfig(stem=(2, 2))


@pytest.mark.parametrize("mode", ["average", "learned"])
def test_stem_receptive_field_matches_gradient_support(mode):
    torch.manual_seed(0)
    cfg = UNetConfig(channels=(2, 4), pool=((2, 2, 2),), norm="none", stem=(2, 2, 2), stem_mode=mode)
    extent = _gradient_extent(cfg, (64, 64, 64))
    rf = receptive_field(cfg)
    assert all(r - 4 <= e <= r for e, r in zip(extent, rf)), (extent, rf)


@pytest.mark.parametrize("mode", ["average", "learned"])
def test_stem_blockwise_prediction_is_seamless(mode):
    torch.manual_seed(2)
    cfg = UNetConfig(channels=(2, 4), pool=((1, 2, 2),), convs_per_block=1, norm="none", stem=(2, 2, 2), stem_mode=mode)
    m = build_unet3d(cfg).eval()
    img = torch.randn(12, 24, 20)
    a_sdf, a_fg = predict_volume(m, img, block_zyx=(4, 8, 8))
    b_sdf, b_fg = predict_volume(m, img, block_zyx=(12, 24, 20))
    torch.testing.assert_close(a_sdf, b_sdf, atol=1e-5, rtol=0)
    torch.testing.assert_close(a_fg, b_fg, atol=1e-5, rtol=0)


def test_learned_stem_sees_texture_inside_stem_cells():
    """The learned stem sees texture finer than the coarse grid: a pattern that averages to the same
    value in every 2x2x2 cell changes its output, while the average-pooling stem cannot tell it from a
    flat image. Bad stem settings are named."""
    torch.manual_seed(0)
    base = dict(channels=(2, 4), pool=((2, 2, 2),), norm="batch", stem=(2, 2, 2))
    avg, learned = build_unet3d(UNetConfig(**base)).eval(), build_unet3d(UNetConfig(**base, stem_mode="learned")).eval()
    assert sum(p.numel() for p in learned.parameters()) > sum(p.numel() for p in avg.parameters())
    flat = torch.zeros(1, 1, 8, 16, 16)
    checker = (torch.arange(16)[None, None, :] + torch.arange(16)[None, :, None] + torch.arange(8)[:, None, None]) % 2
    texture = (checker.float() * 2 - 1)[None, None]  # +1/-1 alternating: every 2x2x2 mean is 0
    torch.testing.assert_close(avg(flat)[0], avg(texture)[0])
    assert (learned(flat)[0] - learned(texture)[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="stem_mode"):
        UNetConfig(stem_mode="max", stem=(2, 2, 2))
    with pytest.raises(ValueError, match="stem_mode"):
        UNetConfig(stem_mode="learned")
    with pytest.raises(ValueError, match="stem_channels"):
        UNetConfig(stem=(2, 2, 2), stem_mode="learned", stem_channels=0)


def test_learned_lucchi_config_differs_from_the_benchmark_config_only_in_its_stem():
    """unet3d_lucchi_learned is the A/B arm of unet3d_lucchi: everything but the stem must match,
    or the comparison in its header stops meaning anything."""
    from dataclasses import asdict

    from spatialsam.config import load_train_config

    base, learned = asdict(load_train_config("unet3d_lucchi")), asdict(load_train_config("unet3d_lucchi_learned"))
    ub, ul = base.pop("unet"), learned.pop("unet")
    assert base == learned
    assert ul.pop("stem_mode") == "learned" and ub.pop("stem_mode", "average") == "average"
    assert ul.pop("stem_channels") == 8
    ub.pop("stem_channels", None)
    assert ub == ul


def test_config_base_merges_mappings_and_rejects_cycles(tmp_path):
    """``base:`` starts from another config: mappings merge key by key, scalars replace, and a
    config that inherits from itself is named instead of recursing forever."""
    from spatialsam.config import load_train_config

    child = tmp_path / "child.yaml"
    child.write_text("base: unet3d_lucchi\nlr: 0.001\nunet:\n  channels: [8, 16, 32, 64]\n")
    cfg = load_train_config(child)
    assert cfg.lr == 0.001 and cfg.unet["channels"] == [8, 16, 32, 64]
    assert cfg.unet["norm"] == "batch" and cfg.crop_zyx == load_train_config("unet3d_lucchi").crop_zyx
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_train_config(a)
