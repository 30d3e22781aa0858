"""Reference predictor: SAM2's video-predictor lifecycle over the z axis of an EM volume, with SDF
memory, plus automatic mode (seeds from the SDF) and volume-wide propagation from annotated slices.

It calls only the three propagator methods that are exported as ONNX graphs (encode_image,
encode_memory, decode) and the bank rules of memory.select_memory, so the TypeScript server can
reproduce it step for step. Every loop rule it applies is also written into propagator.json.

Lifecycle: state = init_state(image, sdf); add_prompts(state, z, obj_id, ...) -> {obj_id: mask};
for z, masks in propagate(state, direction=...): ...; remove_object; reset_state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from scipy.special import expit

from spatialsam.device import to_device, to_numpy
from spatialsam.image_encoder import ImageFeatures
from spatialsam.mask_decoder import DecoderOutput
from spatialsam.memory import MemoryEntry, pack_banks, select_memory
from spatialsam.prompt_encoder import LABEL_BOX_BR, LABEL_BOX_TL, LABEL_PAD
from spatialsam.propagator import Propagator

DIRECTIONS = ("forward", "backward", "both")
MASK_PROMPT_LOGIT = 10.0  # |logit| of a user-given mask (input and output), as SAM2's mask inputs


@dataclass
class SliceOutput:
    """The model's output for one object on one slice (padded slice size Hp, Wp).

    low_res_logits [1, Hp/4, Wp/4] float32; object_score: presence logit; iou: predicted IoU;
    obj_ptr [D] float32; memory [Dm, Hp/16, Wp/16] float32 (encoded lazily, then cached).
    full_logits [1, Hp, Wp] is set only for mask-only prompts (the given mask is the output).
    """

    low_res_logits: torch.Tensor
    object_score: float
    iou: float
    obj_ptr: torch.Tensor
    memory: torch.Tensor | None = None
    full_logits: torch.Tensor | None = None


@dataclass
class SlicePrompts:
    """Prompts on one slice: clicks [N, 2] float32 (x, y) pixels with labels [N] (1 pos, 0 neg),
    box [4] float32 (x0, y0, x1, y1) or None, mask bool [Y, X] or None."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None


@dataclass
class ObjectTrack:
    """One user object: its prompts and outputs per z. Prompted (cond) and propagated outputs are kept
    apart, as in SAM2: prompted slices are always in the memory bank."""

    obj_id: int
    prompts: dict[int, SlicePrompts] = field(default_factory=dict)
    cond: dict[int, SliceOutput] = field(default_factory=dict)
    noncond: dict[int, SliceOutput] = field(default_factory=dict)

    def output(self, z: int) -> SliceOutput | None:
        return self.cond.get(z) or self.noncond.get(z)


@dataclass
class PredictorState:
    """A session over one volume (or crop). image uint8 [Z, Y, X]; sdf float32 [Z, Y, X] normalised
    (sdf.py, positive inside). Slices are padded bottom/right to (Hp, Wp), multiples of the stride.
    `objects` keeps insertion order: an object's batch index is its position; its id is the user's."""

    image: np.ndarray
    sdf: np.ndarray
    padded_hw: tuple[int, int]
    features: dict[int, ImageFeatures] = field(default_factory=dict)
    objects: dict[int, ObjectTrack] = field(default_factory=dict)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        z, y, x = self.image.shape
        return z, y, x

    def obj_index(self, obj_id: int) -> int:
        """Batch index of a user object id."""
        return list(self.objects).index(obj_id)


def _check_finite_array(a: object, name: str, shape_tail: tuple[int, ...], ndim: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != ndim or (shape_tail and arr.shape[-len(shape_tail):] != shape_tail):
        raise ValueError(f"{name}: expected shape {('N',) * (ndim - len(shape_tail)) + shape_tail}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


class Predictor:
    """Reference predictor around a Propagator (eval mode, no gradients)."""

    def __init__(self, model: Propagator, feature_cache_slices: int | None = None) -> None:
        self.model = model.eval()
        self.cfg = model.cfg
        self.feature_cache_slices = feature_cache_slices

    # ---- session ---------------------------------------------------------------------------------
    def init_state(self, image: np.ndarray, sdf: np.ndarray) -> PredictorState:
        """image uint8 [Z, Y, X], sdf float32 [Z, Y, X] (normalised, positive inside)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8 or image.size == 0:
            raise ValueError(f"image: expected a non-empty uint8 [Z, Y, X] array, got {getattr(image, 'shape', image)!r}")
        if not isinstance(sdf, np.ndarray) or sdf.shape != image.shape:
            raise ValueError(f"sdf: expected shape {image.shape} like image, got {getattr(sdf, 'shape', sdf)!r}")
        sdf = sdf.astype(np.float32, copy=False)
        if not np.isfinite(sdf).all():
            raise ValueError("sdf: contains NaN or infinite values")
        s = self.model.stride
        _, y, x = image.shape
        if min(y, x) < 2 * s:
            raise ValueError(f"image: slices must be at least {2 * s} x {2 * s}, got {y} x {x}")
        hp, wp = -(-y // s) * s, -(-x // s) * s
        return PredictorState(image=image, sdf=sdf, padded_hw=(hp, wp))

    def reset_state(self, state: PredictorState) -> None:
        """Drop every object, prompt and output; keep the cached image features."""
        state.objects.clear()

    def remove_object(self, state: PredictorState, obj_id: int) -> list[int]:
        """Forget one object; returns the remaining object ids (their batch indices shift down)."""
        if obj_id not in state.objects:
            raise ValueError(f"obj_id: unknown object {obj_id} (known: {list(state.objects)})")
        del state.objects[obj_id]
        return list(state.objects)

    # ---- inputs, padded -------------------------------------------------------------------------
    def _pad(self, a: np.ndarray, hw: tuple[int, int], value: float) -> torch.Tensor:
        y, x = a.shape
        out = np.full(hw, value, np.float32)
        out[:y, :x] = a
        return to_device(out)[None, None]

    def image_input(self, state: PredictorState, z: int) -> torch.Tensor:
        """The encoder's input for slice z, [1, 1, Hp, Wp]: normalised, padding 0 after normalisation."""
        img = self.model.normalize(torch.from_numpy(state.image[z].astype(np.float32)))
        return self._pad(to_numpy(img), state.padded_hw, 0.0)

    def cache_features(self, state: PredictorState, z: int, f: ImageFeatures) -> None:
        """Keep slice z's features, evicting the oldest beyond feature_cache_slices."""
        if self.feature_cache_slices is not None and len(state.features) >= self.feature_cache_slices:
            state.features.pop(next(iter(state.features)))
        state.features[z] = f

    def features(self, state: PredictorState, z: int) -> ImageFeatures:
        """Image embedding of slice z (cached per slice)."""
        f = state.features.get(z)
        if f is None:
            with torch.no_grad():
                f = self.model.encode_image(self.image_input(state, z))
            self.cache_features(state, z, f)
        return f

    def sdf_slice(self, state: PredictorState, z: int) -> torch.Tensor:
        """[1, 1, Hp, Wp]; padding is -1 (background)."""
        return self._pad(state.sdf[z], state.padded_hw, -1.0)

    def _full_logits(self, out: SliceOutput) -> torch.Tensor:
        if out.full_logits is not None:
            return out.full_logits
        d = DecoderOutput(out.low_res_logits[None], torch.tensor([[out.iou]]),
                          torch.tensor([[out.object_score]]), out.obj_ptr[None])
        return self.model.mask_logits(d)[0]

    def mask_logits(self, state: PredictorState, obj_id: int, z: int) -> np.ndarray | None:
        """float32 [Y, X] logits of an object on z, or None if it has no output there."""
        out = state.objects[obj_id].output(z)
        if out is None:
            return None
        _, y, x = state.shape_zyx
        return to_numpy(self._full_logits(out)[0, :y, :x])

    def _mask(self, state: PredictorState, obj_id: int, z: int) -> np.ndarray:
        lg = self.mask_logits(state, obj_id, z)
        return lg > self.cfg.mask_threshold if lg is not None else np.zeros(state.shape_zyx[1:], bool)

    def _entry(self, state: PredictorState, z: int, out: SliceOutput, is_cond: bool) -> MemoryEntry:
        """Memory entry of an output; the memory encoder sees the binarised full-resolution mask."""
        if out.memory is None:
            m = (self._full_logits(out) > self.cfg.mask_threshold).float()[None]
            with torch.no_grad():
                out.memory = self.model.encode_memory(self.features(state, z).feat, self.sdf_slice(state, z), m)[0]
        return MemoryEntry(z=z, is_cond=is_cond, tokens=out.memory, obj_ptr=out.obj_ptr)

    def _bank(self, state: PredictorState, track: ObjectTrack, z: int, direction: int, with_recent: bool
              ) -> tuple[list[MemoryEntry], list[MemoryEntry]]:
        cond = {zz: self._entry(state, zz, o, True) for zz, o in track.cond.items() if zz != z}
        noncond: dict[int, MemoryEntry] = {}
        if with_recent:
            want = {z - direction * i for i in range(1, max(self.cfg.num_recent, self.cfg.max_ptrs - 1) + 1)}
            noncond = {zz: self._entry(state, zz, o, False) for zz, o in track.noncond.items() if zz in want}
        return select_memory(cond, noncond, z, direction, self.cfg.num_recent, self.cfg.max_cond, self.cfg.max_ptrs)

    def _decode(self, state: PredictorState, z: int, banks: list[tuple[list[MemoryEntry], list[MemoryEntry]]],
                coords: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor, has_mask: torch.Tensor
                ) -> list[SliceOutput]:
        b = len(banks)
        f = self.features(state, z)
        hp, wp = state.padded_hw
        s = self.model.stride
        packed = pack_banks(banks, z, (self.cfg.mem_dim, hp // s, wp // s), self.cfg.dim)
        with torch.no_grad():
            o = self.model.decode(f.expand(b), self.sdf_slice(state, z).expand(b, -1, -1, -1), packed,
                                  coords, labels, mask_input, has_mask)
        return [SliceOutput(o.low_res_logits[i], float(o.object_score[i, 0]), float(o.iou[i, 0]), o.obj_ptr[i])
                for i in range(b)]

    # ---- prompts ----------------------------------------------------------------------------------
    def _check_z(self, state: PredictorState, z: object, name: str = "z") -> int:
        if isinstance(z, bool) or not isinstance(z, (int, np.integer)) or not 0 <= int(z) < state.shape_zyx[0]:
            raise ValueError(f"{name}: expected an integer slice index in [0, {state.shape_zyx[0]}), got {z!r}")
        return int(z)

    def add_prompts(
        self,
        state: PredictorState,
        z: int,
        obj_id: int,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        mask: np.ndarray | None = None,
        clear_old: bool = False,
    ) -> dict[int, np.ndarray]:
        """Add clicks (points [N, 2] (x, y) pixels, labels [N] 1 positive / 0 negative), a box
        (x0, y0, x1, y1) pixels or a mask (bool [Y, X]) for `obj_id` on slice z, and segment that slice.

        Clicks accumulate on the slice unless clear_old; a new box or mask replaces the old one. The
        slice becomes a prompted (cond) slice: always in the object's memory. Memory for this step: the
        object's other prompted slices only. Returns {obj_id: bool [Y, X]} for every object with an
        output on z.
        """
        z = self._check_z(state, z)
        if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
            raise ValueError(f"obj_id: expected an integer, got {obj_id!r}")
        obj_id = int(obj_id)
        _, y, x = state.shape_zyx
        pts = np.zeros((0, 2)) if points is None else _check_finite_array(points, "points", (2,), 2)
        if pts.size and ((pts[:, 0] < 0) | (pts[:, 0] > x - 1) | (pts[:, 1] < 0) | (pts[:, 1] > y - 1)).any():
            raise ValueError(f"points: coordinates must lie in the slice, x in [0, {x - 1}], y in [0, {y - 1}]")
        lab = np.zeros((0,)) if labels is None else _check_finite_array(labels, "labels", (), 1)
        if lab.shape[0] != pts.shape[0]:
            raise ValueError(f"labels: expected {pts.shape[0]} labels (one per point), got {lab.shape[0]}")
        if lab.size and not np.isin(lab, (0, 1)).all():
            raise ValueError("labels: expected 1 (positive) or 0 (negative)")
        bx = None
        if box is not None:
            bx = _check_finite_array(box, "box", (4,), 1)
            if not (0 <= bx[0] < bx[2] <= x - 1 + 1e-6 and 0 <= bx[1] < bx[3] <= y - 1 + 1e-6):
                raise ValueError(f"box: expected x0 < x1, y0 < y1 inside the slice, got {bx.tolist()}")
        mk = None
        if mask is not None:
            mk = np.asarray(mask)
            if mk.shape != (y, x):
                raise ValueError(f"mask: expected shape {(y, x)}, got {mk.shape}")
            mk = mk.astype(bool)
        if pts.shape[0] == 0 and bx is None and mk is None:
            raise ValueError("points: empty prompt (give points, a box or a mask)")

        track = state.objects.setdefault(obj_id, ObjectTrack(obj_id))
        p = track.prompts.get(z)
        if p is None or clear_old:
            p = SlicePrompts()
        p.points = np.concatenate([p.points, pts.astype(np.float32)])
        p.labels = np.concatenate([p.labels, lab.astype(np.float32)])
        if bx is not None:
            p.box = bx.astype(np.float32)
        if mk is not None:
            p.mask = mk
        track.prompts[z] = p

        coords, plabels = self.prompt_tensors(p)
        mask_input, has_mask = self.mask_prompt(state, p.mask)
        out = self._decode(state, z, [self._bank(state, track, z, 1, with_recent=False)],
                           coords, plabels, mask_input, has_mask)[0]
        if p.mask is not None and p.points.shape[0] == 0 and p.box is None:
            full = self._pad(p.mask.astype(np.float32), state.padded_hw, 0.0)[0]
            out.full_logits = (full * 2 - 1) * MASK_PROMPT_LOGIT
            out.object_score = MASK_PROMPT_LOGIT if p.mask.any() else -MASK_PROMPT_LOGIT
        track.noncond.pop(z, None)
        track.cond[z] = out
        return {oid: self._mask(state, oid, z) for oid, t in state.objects.items() if t.output(z) is not None}

    @staticmethod
    def prompt_tensors(p: SlicePrompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder point inputs [1, K, 2] and [1, K]: box corners (labels 2, 3) first, then clicks in
        order, then one padding point (0, 0, label -1) when there is no box (SAM's rule)."""
        coords = [p.points]
        labels = [p.labels]
        if p.box is not None:
            coords.insert(0, p.box.reshape(2, 2))
            labels.insert(0, np.array([LABEL_BOX_TL, LABEL_BOX_BR], np.float32))
        else:
            coords.append(np.zeros((1, 2), np.float32))
            labels.append(np.array([LABEL_PAD], np.float32))
        return (to_device(np.concatenate(coords).astype(np.float32))[None],
                to_device(np.concatenate(labels).astype(np.float32))[None])

    def mask_prompt(self, state: PredictorState, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense prompt [1, 1, Hp/4, Wp/4] logits and has_mask [1]: 4x4 average of the 0/1 mask,
        mapped to 2 * MASK_PROMPT_LOGIT * avg - MASK_PROMPT_LOGIT; zeros and 0 without a mask."""
        hp, wp = state.padded_hw
        if mask is None:
            return torch.zeros(1, 1, hp // 4, wp // 4), torch.zeros(1)
        m = self._pad(mask.astype(np.float32), state.padded_hw, 0.0)
        avg = torch.nn.functional.avg_pool2d(m, 4)
        return avg * (2 * MASK_PROMPT_LOGIT) - MASK_PROMPT_LOGIT, torch.ones(1)

    # ---- propagation ------------------------------------------------------------------------------
    def propagate(
        self,
        state: PredictorState,
        start_z: int | None = None,
        direction: str = "forward",
        max_slices: int | None = None,
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Yield (z, {obj_id: bool [Y, X]}) slice by slice from start_z (included) in `direction`.

        start_z defaults to the lowest prompted slice ("forward", "both") or the highest ("backward");
        "both" runs forward, then backward from start_z (start_z is yielded once per run). max_slices
        counts slices per run, start included. Prompted slices keep their prompted output; every other
        slice is recomputed for all prompted objects at once (one batch) with the bank of
        memory.select_memory, and replaces earlier outputs on that slice.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
        tracks = [t for t in state.objects.values() if t.cond]
        if not tracks:
            raise ValueError("state: no object has prompts; call add_prompts first")
        if max_slices is not None and (not isinstance(max_slices, int) or max_slices < 1):
            raise ValueError(f"max_slices: expected a positive integer, got {max_slices!r}")
        conds = [zz for t in tracks for zz in t.cond]
        if start_z is None:
            start_z = max(conds) if direction == "backward" else min(conds)
        start_z = self._check_z(state, start_z, "start_z")
        runs = [1, -1] if direction == "both" else [1 if direction == "forward" else -1]
        nz = state.shape_zyx[0]
        for d in runs:
            stop = nz if d == 1 else -1
            zs = list(range(start_z, stop, d))[: max_slices or None]
            for z in zs:
                yield z, self._step(state, tracks, z, d)

    def _step(self, state: PredictorState, tracks: list[ObjectTrack], z: int, d: int) -> dict[int, np.ndarray]:
        todo = [t for t in tracks if z not in t.cond]
        if todo:
            b = len(todo)
            hp, wp = state.padded_hw
            coords = torch.zeros(b, 1, 2)
            labels = torch.full((b, 1), float(LABEL_PAD))
            outs = self._decode(state, z, [self._bank(state, t, z, d, with_recent=True) for t in todo],
                                coords, labels, torch.zeros(b, 1, hp // 4, wp // 4), torch.zeros(b))
            for t, o in zip(todo, outs, strict=True):
                t.noncond[z] = o
        return {t.obj_id: self._mask(state, t.obj_id, z) for t in tracks}


# ---- automatic mode and volume-wide propagation ---------------------------------------------------
def _crop_window(center: tuple[float, float], extent: tuple[int, int], shape_yx: tuple[int, int], size: int,
                 stride: int) -> tuple[slice, slice]:
    """A window of at least `size` (and at least the extent + size/2) around center, clipped."""
    out = []
    for c, e, n in zip(center, extent, shape_yx, strict=True):
        w = min(n, max(size, -(-(e + size // 2) // stride) * stride))
        lo = int(round(c - w / 2))
        lo = max(0, min(lo, n - w))
        out.append(slice(lo, lo + w))
    return out[0], out[1]


def _seed_prompt(box: np.ndarray, x: float, y: float, shape_yx: tuple[int, int], crop: int, stride: int
                 ) -> tuple[tuple[slice, slice], dict[str, object]]:
    """Crop window centred on the box (x0, y0, x1, y1) and the prompt in window coordinates: the click
    (x, y) and the box clipped to the window (dropped when it is degenerate)."""
    ext = (int(box[3] - box[1]) + 1, int(box[2] - box[0]) + 1)
    win = _crop_window(((box[1] + box[3]) / 2, (box[0] + box[2]) / 2), ext, shape_yx, crop, stride)
    oy, ox = win[0].start, win[1].start
    wy, wx = win[0].stop - oy - 1, win[1].stop - ox - 1
    b = np.clip(box - np.array([ox, oy, ox, oy], np.float32), 0, [wx, wy, wx, wy])
    prompt: dict[str, object] = {"points": [[min(max(x - ox, 0), wx), min(max(y - oy, 0), wy)]], "labels": [1]}
    if b[2] > b[0] and b[3] > b[1]:
        prompt["box"] = b.tolist()
    return win, prompt


def _propagate_object(pred: Predictor, image: np.ndarray, sdf: np.ndarray, z0: int, window: tuple[slice, slice],
                      prompt: dict[str, object], patience: int) -> dict[int, np.ndarray]:
    """Propagate one object from slice z0 both ways inside window, stopping a direction after
    `patience` consecutive slices without the object. Returns {z: float32 logits [wy, wx]}."""
    st = pred.init_state(np.ascontiguousarray(image[:, window[0], window[1]]),
                         np.ascontiguousarray(sdf[:, window[0], window[1]]))
    pred.add_prompts(st, z0, 1, **prompt)  # type: ignore[arg-type]
    logits: dict[int, np.ndarray] = {}
    for direction in ("forward", "backward"):
        misses = 0
        for z, masks in pred.propagate(st, start_z=z0, direction=direction):
            lg = pred.mask_logits(st, 1, z)
            assert lg is not None
            logits[z] = lg
            misses = 0 if masks[1].any() else misses + 1
            if misses >= patience:
                break
        # Evict old memory: a crop session lives only for this object.
        st.features.clear()
    return logits


def _cat_features(fs: list[ImageFeatures]) -> ImageFeatures:
    return ImageFeatures(torch.cat([f.feat for f in fs]), torch.cat([f.skip8 for f in fs]),
                         torch.cat([f.skip4 for f in fs]))


def _lockstep_step(pred: Predictor, states: list[PredictorState], zs: list[int], d: int) -> np.ndarray:
    """Predictor._step for one object (id 1) in each of several same-sized crop sessions, state i on
    slice zs[i], as batches: the slices' image encodings, the memory encodings the banks still lack,
    then one decode. Returns the objects' full-resolution logits float32 [B, wy, wx] (as
    Predictor.mask_logits gives them one by one)."""
    model = pred.model
    new = [(st, z) for st, z in zip(states, zs, strict=True) if z not in st.features]
    if new:
        with torch.no_grad():
            f = model.encode_image(torch.cat([pred.image_input(st, z) for st, z in new]))
        for i, (st, z) in enumerate(new):
            pred.cache_features(st, z, f.index(i))
    # The outputs whose memory the banks need (as Predictor._bank picks them), encoded together.
    recent = range(1, max(pred.cfg.num_recent, pred.cfg.max_ptrs - 1) + 1)
    need = []
    for st, z in zip(states, zs, strict=True):
        t, want = st.objects[1], {z - d * i for i in recent}
        need += [(st, zz, o) for zz, o in t.cond.items() if zz != z and o.memory is None]
        need += [(st, zz, o) for zz, o in t.noncond.items() if zz in want and o.memory is None]
    if need:
        feats = torch.cat([pred.features(st, zz).feat for st, zz, _ in need])
        sdfs = torch.cat([pred.sdf_slice(st, zz) for st, zz, _ in need])
        masks = torch.cat([(pred._full_logits(o) > pred.cfg.mask_threshold).float()[None] for _, _, o in need])
        with torch.no_grad():
            mem = model.encode_memory(feats, sdfs, masks)
        for i, (_, _, o) in enumerate(need):
            o.memory = mem[i]
    b = len(states)
    hp, wp = states[0].padded_hw
    s = model.stride
    banks = [pred._bank(st, st.objects[1], z, d, with_recent=True) for st, z in zip(states, zs, strict=True)]
    packed = pack_banks(banks, zs, (pred.cfg.mem_dim, hp // s, wp // s), pred.cfg.dim)
    with torch.no_grad():
        o = model.decode(_cat_features([st.features[z] for st, z in zip(states, zs, strict=True)]),
                         torch.cat([pred.sdf_slice(st, z) for st, z in zip(states, zs, strict=True)]), packed,
                         torch.zeros(b, 1, 2), torch.full((b, 1), float(LABEL_PAD)),
                         torch.zeros(b, 1, hp // 4, wp // 4), torch.zeros(b))
    scores, ious = to_numpy(o.object_score[:, 0]).tolist(), to_numpy(o.iou[:, 0]).tolist()  # one transfer
    for i, (st, z) in enumerate(zip(states, zs, strict=True)):
        st.objects[1].noncond[z] = SliceOutput(o.low_res_logits[i], scores[i], ious[i], o.obj_ptr[i])
    # Full-resolution logits of the whole batch, upsampled together and copied back once.
    _, y, x = states[0].shape_zyx
    with torch.no_grad():
        full = model.mask_logits(o)[:, 0, :y, :x]
    return to_numpy(full)


def _propagate_objects(pred: Predictor, image: np.ndarray, sdf: np.ndarray, starts: list[int],
                       windows: list[tuple[slice, slice]], prompts: list[dict[str, object]], patience: int,
                       emit: Callable[[int, int, np.ndarray], None]) -> None:
    """_propagate_object for several objects (object i prompted on slice starts[i] in windows[i]; all
    windows of one size) in lockstep: step k of a direction takes every object still followed k
    slices away from its start, as one batch (_lockstep_step). Each object keeps its own session,
    bank and stopping rule, so the results are those of one _propagate_object per object up to the
    rounding of batched kernels. Each slice's logits go to emit(i, z, float32 [wy, wx]) as they are
    made (the start slice once per direction), so memory does not grow with the objects' lengths.
    The sessions hold views of their windows, not copies: a batch of 64 objects in 128 px windows
    would otherwise copy 5 bytes x depth x 16384 px per object (5.2 GB for a 1000-slice volume)."""
    states = [pred.init_state(image[:, w[0], w[1]], sdf[:, w[0], w[1]]) for w in windows]
    for st, z0, prompt in zip(states, starts, prompts, strict=True):
        pred.add_prompts(st, z0, 1, **prompt)  # type: ignore[arg-type]
    nz = image.shape[0]
    for d in (1, -1):
        active = list(range(len(states)))
        misses = [0] * len(states)
        k = 0
        while active:
            active = [i for i in active if 0 <= starts[i] + d * k < nz]
            if not active:
                break
            if k:
                batch = _lockstep_step(pred, [states[i] for i in active], [starts[i] + d * k for i in active], d)
            else:  # the prompted slice (a mask prompt's output is the mask itself)
                batch = np.stack([pred.mask_logits(states[i], 1, starts[i]) for i in active])  # type: ignore[arg-type]
            for i, lg in zip(list(active), batch, strict=True):
                z = starts[i] + d * k
                emit(i, z, lg)
                misses[i] = 0 if (lg > pred.cfg.mask_threshold).any() else misses[i] + 1
                if misses[i] >= patience:
                    active.remove(i)
            k += 1
        for st in states:
            st.features.clear()


def _lockstep_predictor(model: Propagator) -> Predictor:
    """A predictor whose sessions keep only the image features lockstep propagation still needs
    (the current slice and the few before it whose memory is not encoded yet), so a batch of
    objects holds a few slices of features each, not every slice it has passed."""
    return Predictor(model, feature_cache_slices=max(model.cfg.num_recent, model.cfg.max_ptrs) + 2)


def _lockstep_groups(windows: list[tuple[slice, slice]], batch: int) -> list[list[int]]:
    """Indices of same-sized windows, in their order, in groups of at most `batch`."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(windows):
        by_size.setdefault((w[0].stop - w[0].start, w[1].stop - w[1].start), []).append(i)
    return [idx[k:k + batch] for idx in by_size.values() for k in range(0, len(idx), batch)]


def _check_batch(batch: object) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    return batch


def propagate_volume(
    model: Propagator,
    image: np.ndarray,
    sdf: np.ndarray,
    annotated_slices: Sequence[int],
    labels: np.ndarray,
    *,
    crop: int = 128,
    patience: int = 3,
    batch: int = 64,
) -> np.ndarray:
    """Propagate every object found on the annotated slices through the volume, both directions.

    image uint8 [Z, Y, X]; sdf float32 [Z, Y, X]; labels [Z, Y, X] (bool/0-1 or instance ids; only
    the annotated slices are read; each 2D connected component there is one object, prompted by its
    mask). Each object runs in its own crop window (at least `crop` px, covering its cross-section)
    and stops a direction after `patience` slices without it. Objects whose windows have one size
    are followed in lockstep, up to `batch` per batch (1: one at a time; the results agree up to
    float rounding). Returns foreground probabilities float32 [Z, Y, X]: the
    maximum over objects of sigmoid(logits); annotated slices keep their labels.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"image: expected uint8 [Z, Y, X], got {getattr(image, 'shape', image)!r}")
    if sdf.shape != image.shape:
        raise ValueError(f"sdf: shape {sdf.shape} does not match image shape {image.shape}")
    if labels.shape != image.shape:
        raise ValueError(f"labels: shape {labels.shape} does not match image shape {image.shape}")
    zs = sorted({int(z) for z in annotated_slices})
    if not zs:
        raise ValueError("annotated_slices: empty")
    if zs[0] < 0 or zs[-1] >= image.shape[0]:
        raise ValueError(f"annotated_slices: indices must lie in [0, {image.shape[0]})")
    _check_batch(batch)
    pred = _lockstep_predictor(model)
    prob = np.zeros(image.shape, np.float32)
    starts, windows, prompts = [], [], []
    for z0 in zs:
        comps, _ = ndimage.label(labels[z0] > 0)
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            cy, cx = (sl[0].start + sl[0].stop) / 2, (sl[1].start + sl[1].stop) / 2
            win = _crop_window((cy, cx), (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start),
                               image.shape[1:], crop, model.stride)
            starts.append(z0)
            windows.append(win)
            prompts.append({"mask": (comps == i)[win]})
    for group in _lockstep_groups(windows, batch):
        def keep_max(j: int, z: int, lg: np.ndarray, group: list[int] = group) -> None:
            win = windows[group[j]]
            region = prob[z, win[0], win[1]]
            np.maximum(region, expit(lg).astype(np.float32), out=region)

        _propagate_objects(pred, image, sdf, [starts[i] for i in group], [windows[i] for i in group],
                           [prompts[i] for i in group], patience, keep_max)
    for z0 in zs:
        prob[z0] = (labels[z0] > 0).astype(np.float32)
    return prob


def evaluate_tracking(
    model: Propagator,
    image: np.ndarray,
    sdf: np.ndarray,
    labels: np.ndarray,
    *,
    n_objects: int = 20,
    min_slices: int = 5,
    crop: int = 128,
    patience: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Interactive-use score: for up to n_objects 3D components of labels (>= min_slices slices, drawn
    with `seed`), one click at the deepest point of the largest cross-section plus its bounding box,
    propagate both ways; returns the mean 3D IoU with the component, the mean per-slice IoU over the
    component's slices, and the number of objects. labels: bool/0-1 [Z, Y, X]."""
    comps, _ = ndimage.label(labels > 0)
    sls = ndimage.find_objects(comps)
    cands = [i for i, sl in enumerate(sls, start=1) if sl[0].stop - sl[0].start >= min_slices]
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(cands, size=min(n_objects, len(cands)), replace=False).tolist()) if cands else []
    pred = Predictor(model)
    ious, slice_ious = [], []
    for i in pick:
        gt = comps == i
        areas = gt.sum(axis=(1, 2))
        z0 = int(np.argmax(areas))
        d = ndimage.distance_transform_edt(gt[z0])
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        ys, xs = np.nonzero(gt[z0])
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        win, prompt = _seed_prompt(box, float(x), float(y), image.shape[1:], crop, model.stride)
        p = np.zeros(gt.shape, bool)
        for z, lg in _propagate_object(pred, image, sdf, z0, win, prompt, patience).items():
            p[z, win[0], win[1]] = lg > model.cfg.mask_threshold
        ious.append((p & gt).sum() / (p | gt).sum())
        zs = np.nonzero(areas)[0]
        slice_ious.append(float(np.mean([(p[z] & gt[z]).sum() / (p[z] | gt[z]).sum() for z in zs])))
    return {"objects": len(pick), "mean_iou_3d": float(np.mean(ious)) if ious else float("nan"),
            "mean_slice_iou": float(np.mean(slice_ious)) if slice_ious else float("nan")}


def evaluate_clicks(
    model: Propagator,
    image: np.ndarray,
    sdf: np.ndarray,
    labels: np.ndarray,
    *,
    negative_on_neighbour: bool = False,
    patience: int = 3,
    object_ids: Sequence[int] | None = None,
    window: int | None = None,
) -> dict[str, float | int]:
    """The demo's use: per instance of labels (ids, uint [Z, Y, X]), one positive click at the deepest
    point of its largest cross-section, no box, propagated both ways in whole slices (window None) or
    in a window of at least `window` px around that cross-section.
    With negative_on_neighbour, a negative click at the deepest point of the nearest other object on
    that slice is added (objects alone on their slice are skipped). object_ids: a subset (default all).
    Returns the number of objects,
    mean and minimum 3D IoU, and mean share of predicted voxels lying on other instances."""
    pred = Predictor(model)
    # Whole slices: one session, reset per object, so image features are encoded once.
    whole = pred.init_state(image, sdf) if window is None else None
    ious, leaks = [], []
    ids = [int(i) for i in np.unique(labels) if i != 0] if object_ids is None else [int(i) for i in object_ids]
    for obj_id in ids:
        gt = labels == obj_id
        z0 = int(np.argmax(gt.sum(axis=(1, 2))))
        d = ndimage.distance_transform_edt(gt[z0])
        y, x = np.unravel_index(int(np.argmax(d)), d.shape)
        if whole is not None:
            pred.reset_state(whole)
            st, win = whole, (slice(0, image.shape[1]), slice(0, image.shape[2]))
        else:
            ys, xs = np.nonzero(gt[z0])
            win = _crop_window(((ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2),
                               (int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1), image.shape[1:], window, model.stride)
            st = pred.init_state(np.ascontiguousarray(image[:, win[0], win[1]]), np.ascontiguousarray(sdf[:, win[0], win[1]]))
        oy, ox = win[0].start, win[1].start
        points, point_labels = [[float(x - ox), float(y - oy)]], [1]
        if negative_on_neighbour:
            # The nearest other object inside the window; its deepest point there gets the click.
            g = gt[z0][win]
            others = (labels[z0][win] != 0) & ~g
            if not others.any():
                continue
            near = ndimage.distance_transform_edt(~g)
            cc, _ = ndimage.label(others)
            ny_, nx_ = np.nonzero(others)
            k = int(np.argmin(near[ny_, nx_]))
            dn = ndimage.distance_transform_edt(cc == cc[ny_[k], nx_[k]])
            ny, nx = np.unravel_index(int(np.argmax(dn)), dn.shape)
            points.append([float(nx), float(ny)])
            point_labels.append(0)
        prompt: dict[str, object] = {"points": points, "labels": point_labels}
        pred.add_prompts(st, z0, 1, **prompt)  # type: ignore[arg-type]
        p = np.zeros(gt.shape, bool)
        hw = st.image.shape[1:]
        view = p[:, oy:oy + hw[0], ox:ox + hw[1]]
        view[z0] = pred.mask_logits(st, 1, z0) > model.cfg.mask_threshold  # type: ignore[operator]
        for direction in ("forward", "backward"):
            misses = 0
            for z, masks in pred.propagate(st, start_z=z0, direction=direction):
                view[z] = masks[1]
                misses = 0 if masks[1].any() else misses + 1
                if misses >= patience:
                    break
        ious.append(float((p & gt).sum() / (p | gt).sum()))
        leaks.append(float((p & (labels != 0) & ~gt).sum() / max(1, p.sum())))
    return {"objects": len(ious), "mean_iou_3d": float(np.mean(ious)) if ious else float("nan"),
            "min_iou_3d": float(np.min(ious)) if ious else float("nan"),
            "mean_share_on_other_objects": float(np.mean(leaks)) if leaks else float("nan")}


def sdf_seeds(sdf: np.ndarray, min_voxels: int = 64) -> list[tuple[int, float, float, np.ndarray]]:
    """Seeds for automatic mode: one per 3D connected component of sdf > 0 with >= min_voxels voxels.

    Each seed is (z, x, y, box): the slice where the component's cross-section is largest, the
    deepest point there (argmax of the SDF inside the cross-section, first in C order on ties) and the
    cross-section's bounding box (x0, y0, x1, y1). Components are ordered by label (C order of first voxel).
    """
    return _sdf_components(sdf, min_voxels)[1]


def _sdf_components(sdf: np.ndarray, min_voxels: int) -> tuple[np.ndarray, list[tuple[int, float, float, np.ndarray]], np.ndarray]:
    """sdf_seeds, with the components it found: (component labels of sdf > 0 (6-connected, as
    scipy.ndimage.label numbers them), the seeds, and per component label its seed's id (1-based,
    in seed order; 0 for components under min_voxels))."""
    comps, n = ndimage.label(sdf > 0)
    seeds = []
    seed_of = np.zeros(n + 1, np.uint64)
    for i, sl in enumerate(ndimage.find_objects(comps), start=1):
        sub = comps[sl] == i
        if sub.sum() < min_voxels:
            continue
        areas = sub.sum(axis=(1, 2))
        zl = int(np.argmax(areas))
        z = sl[0].start + zl
        cross = np.zeros(sdf.shape[1:], bool)
        cross[sl[1], sl[2]] = sub[zl]
        vals = np.where(cross, sdf[z], -np.inf)
        y, x = np.unravel_index(int(np.argmax(vals)), vals.shape)
        ys, xs = np.nonzero(cross)
        box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        seeds.append((z, float(x), float(y), box))
        seed_of[i] = len(seeds)
    return comps, seeds, seed_of


def segment_volume(
    model: Propagator,
    image: np.ndarray,
    sdf: np.ndarray,
    *,
    min_voxels: int = 64,
    crop: int = 128,
    patience: int = 3,
    batch: int = 64,
    fill: bool = True,
) -> np.ndarray:
    """Automatic mode: uint64 [Z, Y, X] instances (0 background, ids 1.. in seed order).

    Seeds from the SDF (sdf_seeds), each prompted with its deepest point and cross-section box and
    propagated both ways in its own crop window; every voxel goes to the object with the highest
    logit among those > 0 (ties: the earlier seed). Seeds whose windows have one size are followed
    in lockstep, up to `batch` at a time (as in propagate_volume).

    ``fill``: a voxel inside the SDF (> 0) that no object claims goes to the object seeded in its
    SDF component, so the output holds all of the SDF's foreground (components of at least
    min_voxels) and the propagated masks decide instances and add what they find beyond it. Without
    it the output is the propagated masks alone, which lose what a mask drifts off or out of its
    window (Lucchi++ 1/64, seed 1: fg-IoU 0.762 alone, 0.906 filled, the U-Net's own 0.906).
    """
    _check_batch(batch)
    pred = _lockstep_predictor(model)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 [Z, Y, X], got {getattr(image, 'shape', image)!r}")
    if not isinstance(sdf, np.ndarray) or sdf.shape != image.shape:
        raise ValueError(f"sdf: expected shape {image.shape} like image, got {getattr(sdf, 'shape', sdf)!r}")
    if not np.isfinite(sdf).all():
        raise ValueError("sdf: contains NaN or infinite values")
    best = np.full(image.shape, np.float32(0.0))
    out = np.zeros(image.shape, np.uint64)
    comps, seeds, seed_of = _sdf_components(sdf, min_voxels)
    starts = [z for z, _, _, _ in seeds]
    windows, prompts = [], []
    for _, x, y, box in seeds:
        win, prompt = _seed_prompt(box, x, y, image.shape[1:], crop, model.stride)
        windows.append(win)
        prompts.append(prompt)
    for group in _lockstep_groups(windows, batch):
        def keep_best(j: int, zz: int, lg: np.ndarray, group: list[int] = group) -> None:
            k, win = group[j] + 1, windows[group[j]]
            b = best[zz, win[0], win[1]]
            o = out[zz, win[0], win[1]]
            take = (lg > b) | ((lg == b) & (o > k))  # not in seed order: ties still go to the earlier seed
            b[take] = lg[take]
            o[take] = k

        _propagate_objects(pred, image, sdf, [starts[i] for i in group], [windows[i] for i in group],
                           [prompts[i] for i in group], patience, keep_best)
    if fill:
        _fill(out, comps, seed_of)
    return out


def fill_from_sdf(inst: np.ndarray, sdf: np.ndarray, min_voxels: int = 64) -> np.ndarray:
    """segment_volume's fill applied to its fill=False output `inst` (same sdf and min_voxels): the
    filled instances, as segment_volume(..., fill=True) returns them, without propagating again."""
    if not isinstance(inst, np.ndarray) or inst.dtype != np.uint64 or inst.shape != getattr(sdf, "shape", None):
        raise ValueError(f"inst: expected uint64 of the sdf's shape, got {getattr(inst, 'dtype', inst)!r} {getattr(inst, 'shape', '')}")
    comps, _, seed_of = _sdf_components(sdf, min_voxels)
    out = inst.copy()
    _fill(out, comps, seed_of)
    return out


def _fill(out: np.ndarray, comps: np.ndarray, seed_of: np.ndarray) -> None:
    """Voxels of out that are 0 inside an SDF component take that component's seed id (0 if it has none)."""
    hole = (out == 0) & (comps > 0)
    out[hole] = seed_of[comps[hole]]
