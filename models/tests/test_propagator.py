"""Shapes and dtypes of every propagator module, config loading and the encoder registry."""

import pytest
import torch

from spatialsam.image_encoder import ENCODERS, CompactConvEncoder, build_image_encoder, register_encoder
from spatialsam.memory import MemoryEntry, pack_banks
from spatialsam.propagator import NO_OBJ_LOGIT, PropagatorConfig, build_propagator, load_propagator_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return build_propagator("tiny").eval()


def test_configs_load_and_compact_size():
    for name in ("compact", "compact_mask", "tiny"):
        cfg = load_propagator_config(name)
        assert cfg.name == name
    assert load_propagator_config("compact").memory == "sdf"
    assert load_propagator_config("compact_mask").memory == "mask"
    n = build_propagator("compact").param_count()
    assert 300_000 <= n <= 1_000_000, n


def test_bad_config_values():
    with pytest.raises(ValueError, match="memory"):
        PropagatorConfig(memory="both")
    with pytest.raises(ValueError, match="config"):
        load_propagator_config("no_such_config")
    with pytest.raises(ValueError, match="image_encoder.name"):
        build_propagator(PropagatorConfig(image_encoder={"name": "hiera_missing"}))


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b = build_propagator("tiny"), build_propagator("tiny")
    torch.manual_seed(123)
    assert torch.equal(before, torch.rand(1))
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


def test_encoder_registry_swaps_backbone():
    class Wide(CompactConvEncoder):
        pass

    register_encoder("test_wide", Wide)
    try:
        m = build_propagator(PropagatorConfig(image_encoder={"name": "test_wide", "params": {"widths": [8, 8, 16]}},
                                              dim=32, mem_dim=16, heads=2))
        assert isinstance(m.image_encoder, Wide)
        assert build_image_encoder("test_wide", 32, {}).dim == 32
    finally:
        del ENCODERS["test_wide"]


@pytest.mark.parametrize("memory", ["sdf", "mask"])
def test_module_shapes(memory):
    cfg = load_propagator_config("tiny", memory=memory)
    m = build_propagator(cfg).eval()
    b, h, w = 2, 96, 64
    d, dm = cfg.dim, cfg.mem_dim
    f = m.encode_image(torch.randn(b, 1, h, w))
    c8, c4 = m.image_encoder.skip_dims
    assert f.feat.shape == (b, d, h // 16, w // 16) and f.feat.dtype == torch.float32
    assert f.skip8.shape == (b, c8, h // 8, w // 8)
    assert f.skip4.shape == (b, c4, h // 4, w // 4)
    mem = m.encode_memory(f.feat, torch.rand(b, 1, h, w) * 2 - 1, torch.rand(b, 1, h, w).round())
    assert mem.shape == (b, dm, h // 16, w // 16)
    e = MemoryEntry(z=4, is_cond=True, tokens=mem[0].detach(), obj_ptr=torch.randn(d))
    bank = pack_banks([([e, e], [e]), ([], [])], z=5, mem_shape=(dm, h // 16, w // 16), ptr_dim=d)
    assert bank.mem.shape == (b, 2, dm, h // 16, w // 16) and bank.ptrs.shape == (b, 1, d)
    out = m.decode(f, torch.zeros(b, 1, h, w), bank, torch.tensor([[[3.0, 4.0], [0, 0]]] * b),
                   torch.tensor([[1.0, -1.0]] * b), torch.zeros(b, 1, h // 4, w // 4), torch.zeros(b))
    assert out.low_res_logits.shape == (b, 1, h // 4, w // 4)
    assert out.iou.shape == (b, 1) and ((out.iou >= 0) & (out.iou <= 1)).all()
    assert out.object_score.shape == (b, 1) and out.obj_ptr.shape == (b, d)
    full = m.mask_logits(out)
    assert full.shape == (b, 1, h, w) and full.dtype == torch.float32
    absent = out.object_score[:, 0] <= 0
    assert (full[absent] == NO_OBJ_LOGIT).all()


def test_memory_modes_differ_in_what_they_read(tiny):
    """SDF memory changes with the SDF; mask memory (SAM2) does not read it."""
    f = tiny.encode_image(torch.randn(1, 1, 64, 64)).feat
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 16:40] = 1
    s1, s2 = torch.rand(1, 1, 64, 64), -torch.rand(1, 1, 64, 64)
    assert not torch.allclose(tiny.encode_memory(f, s1, mask), tiny.encode_memory(f, s2, mask))
    mm = build_propagator(load_propagator_config("tiny", memory="mask")).eval()
    assert torch.equal(mm.encode_memory(f, s1, mask), mm.encode_memory(f, s2, mask))


def test_padding_keys_are_ignored(tiny):
    """A bank padded with invalid entries gives the same output as the unpadded bank."""
    f = tiny.encode_image(torch.randn(1, 1, 64, 64))
    dm, d = tiny.cfg.mem_dim, tiny.cfg.dim
    e = MemoryEntry(z=2, is_cond=True, tokens=torch.randn(dm, 4, 4), obj_ptr=torch.randn(d))
    junk = MemoryEntry(z=9, is_cond=False, tokens=torch.randn(dm, 4, 4) * 50, obj_ptr=torch.randn(d) * 50)
    a = pack_banks([([e], [e])], 3, (dm, 4, 4), d)
    b = pack_banks([([e, junk], [e, junk])], 3, (dm, 4, 4), d)
    b.mem_valid[0, 1] = 0
    b.ptr_valid[0, 1] = 0
    args = (torch.zeros(1, 1, 2), torch.full((1, 1), -1.0), torch.zeros(1, 1, 16, 16), torch.zeros(1))
    sdf = torch.zeros(1, 1, 64, 64)
    oa, ob = tiny.decode(f, sdf, a, *args), tiny.decode(f, sdf, b, *args)
    torch.testing.assert_close(oa.low_res_logits, ob.low_res_logits, atol=1e-5, rtol=0)
