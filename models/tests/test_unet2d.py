"""2D U-Net baseline: shapes and slice-by-slice application."""

import torch

from spatialsam.unet2d import build_unet2d, predict_slices


def test_shapes_and_slicewise_equals_per_slice_forward():
    torch.manual_seed(0)
    m = build_unet2d({"channels": (2, 4), "pool": ((2, 2),)}).eval()
    sdf, fg = m(torch.randn(3, 1, 8, 12))
    assert sdf.shape == fg.shape == (3, 1, 8, 12) and sdf.dtype == torch.float32
    vol = torch.randn(5, 8, 12)
    s, f = predict_slices(m, vol, batch=2)
    assert s.shape == vol.shape
    with torch.no_grad():
        s2, _ = m(vol[3][None, None])
    torch.testing.assert_close(s[3], s2[0, 0])


def test_odd_sizes_are_padded_and_cropped():
    m = build_unet2d({"channels": (2, 4), "pool": ((2, 2),)}).eval()
    s, f = predict_slices(m, torch.randn(2, 7, 9))
    assert s.shape == (2, 7, 9) and f.shape == (2, 7, 9)
