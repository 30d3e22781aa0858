"""Memory-bank semantics: FIFO of recent slices along the direction of travel, prompted slices always
kept, z-offset encodings, padding; and the predictor applies exactly these rules."""

import numpy as np
import pytest
import torch

from spatialsam.memory import MemoryEntry, ZEncoding, pack_banks, select_memory
from spatialsam.predictor import Predictor
from spatialsam.propagator import build_propagator

torch.set_num_threads(1)


def entries(zs, cond):
    return {z: MemoryEntry(z=z, is_cond=cond, tokens=torch.full((2, 1, 1), float(z)), obj_ptr=torch.full((4,), float(z)))
            for z in zs}


def test_recent_entries_are_a_fifo_along_the_direction():
    cond = entries([0], True)
    non = entries(range(1, 20), False)
    spatial, ptrs = select_memory(cond, non, z=15, direction=1, num_recent=6, max_cond=4, max_ptrs=8)
    assert [e.z for e in spatial] == [0, 14, 13, 12, 11, 10, 9]
    assert [e.z for e in ptrs] == [0, 14, 13, 12, 11, 10, 9, 8]
    back, _ = select_memory(cond, non, z=5, direction=-1, num_recent=3, max_cond=4, max_ptrs=8)
    assert [e.z for e in back] == [0, 6, 7, 8]


def test_prompted_entries_always_kept_however_far():
    cond = entries([0, 40, 100], True)
    non = entries(range(50, 60), False)
    spatial, _ = select_memory(cond, non, z=60, direction=1, num_recent=2, max_cond=2, max_ptrs=4)
    # the two closest prompted slices (40 at 20, 100 at 40 slices) beat 0; then the two most recent
    assert [e.z for e in spatial] == [40, 100, 59, 58]
    assert all(e.is_cond for e in spatial[:2])
    # a prompted slice is never its own memory
    spatial, _ = select_memory(cond, {}, z=40, direction=1, num_recent=2, max_cond=4, max_ptrs=4)
    assert [e.z for e in spatial] == [0, 100]


def test_missing_slices_leave_gaps_not_older_entries():
    non = entries([9, 7], False)
    spatial, _ = select_memory({}, non, z=10, direction=1, num_recent=2, max_cond=1, max_ptrs=2)
    assert [e.z for e in spatial] == [9]


def test_bad_direction():
    with pytest.raises(ValueError, match="direction"):
        select_memory({}, {}, 3, 0, 2, 2, 2)


def test_pack_banks_z_offsets_and_padding():
    e = entries([3, 7], False)
    e[3].is_cond = True
    bank = pack_banks([([e[3], e[7]], [e[7]]), ([], [])], z=5, mem_shape=(2, 1, 1), ptr_dim=4)
    assert bank.mem.shape == (2, 2, 2, 1, 1)
    assert bank.mem_dz.tolist() == [[-2.0, 2.0], [0.0, 0.0]]
    assert bank.mem_cond.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert bank.mem_valid.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert bank.ptr_valid.tolist() == [[1.0], [0.0]]  # never an empty axis
    assert bank.ptr_dz.tolist() == [[2.0], [0.0]]
    # One slice per bank (objects decoded on different slices in one batch).
    both = pack_banks([([e[3]], [e[7]]), ([e[7]], [e[3]])], z=[5, 9], mem_shape=(2, 1, 1), ptr_dim=4)
    assert both.mem_dz.tolist() == [[-2.0], [-2.0]] and both.ptr_dz.tolist() == [[2.0], [-6.0]]
    with pytest.raises(ValueError, match="^z: expected one slice per bank"):
        pack_banks([([e[3]], [])], z=[5, 6], mem_shape=(2, 1, 1), ptr_dim=4)


def test_z_encoding_is_signed_and_distinguishes_offsets():
    enc = ZEncoding(16)
    dz = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    v = enc(dz)
    assert v.shape == (4, 16)
    d = torch.cdist(v, v)
    assert (d + torch.eye(4) * 1e9).min() > 1e-3  # +1 and -1 (before/after) are distinct


def test_predictor_bank_follows_the_rules():
    model = build_propagator("tiny")
    pred = Predictor(model)
    rng = np.random.default_rng(0)
    st = pred.init_state(rng.integers(0, 255, (16, 32, 32), dtype=np.uint8), np.zeros((16, 32, 32), np.float32))
    pred.add_prompts(st, 2, 5, points=[[10, 10]], labels=[1])
    pred.add_prompts(st, 12, 5, points=[[10, 10]], labels=[1])
    list(pred.propagate(st, start_z=2, direction="forward", max_slices=8))  # slices 2..9
    t = st.objects[5]
    assert sorted(t.cond) == [2, 12] and sorted(t.noncond) == list(range(3, 10))
    spatial, ptrs = pred._bank(st, t, 10, 1, with_recent=True)
    cfg = model.cfg
    assert [e.z for e in spatial] == [12, 2] + [9, 8, 7][: cfg.num_recent]
    assert [e.z for e in ptrs][:2] == [12, 2] and len(ptrs) == 2 + cfg.max_ptrs - 1
    # entries carry the memory the encoder made from the stored mask, cached on the output
    assert t.noncond[9].memory is not None and spatial[2].tokens is t.noncond[9].memory
