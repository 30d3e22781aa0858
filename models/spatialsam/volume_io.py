"""Read the user's own EM and label volumes from local files, with the URL syntax of the server's
``openVolume`` (server/volume/README.md), as C-order (z, y, x) numpy arrays in native byte order.

    r = open_volume("zarr:///data/em.zarr?voxel_size_nm=40,4,4", field="--image")
    r.shape, r.dtype, r.voxel_size_nm       # (z, y, x), np.dtype, (z, y, x) nm or None
    a = r.read((slice(0, 32), slice(None), slice(None)))   # only that box is read where possible
    s = r.read_slices([3, 40, 77])                         # only those z-slices are read

URL forms (``<format>:///abs/path``, ``<format>://file:///abs/path`` or ``<format>://rel/path``
relative to the working directory; local files only):

- ``zarr://…/a.zarr``: a Zarr v2/v3 array, or an OME-NGFF 0.4 (``multiscales``) / 0.5
  (``ome.multiscales``) group, read at level 0 (``datasets[0].path``). Axes other than z, y, x
  must have size 1 (a channel axis with several channels is refused); z, y, x in that order.
- ``n5://…/a.n5``: an N5 dataset, or a group holding ``s0`` (tensorstore; N5 axes are x, y, z).
- ``precomputed://…/folder``: Neuroglancer precomputed (``info`` file), scale 0, one channel.
- ``tiff://…/stack.tif``: a multi-page TIFF, page z = slice z (reduced-resolution pages skipped);
  ``tiff://…/folder/``: one TIFF per slice (first page of each), natural name order.
- ``png://…/folder``: 8/16-bit grayscale PNG slices, natural name order (``2.png`` before ``10.png``).
- ``h5://…/a.h5#/path/to/dataset``: an HDF5 dataset (the fragment is required, percent-decoded).
- A bare path: the format is inferred (``*.zarr`` or a folder with .zarray/.zgroup/zarr.json;
  ``*.n5`` or a folder with attributes.json; a folder with ``info``; ``*.tif``/``*.tiff``;
  ``*.h5``/``*.hdf5``/``*.hdf`` with ``#dataset``; a folder of PNGs or of TIFFs).

Arrays with leading singleton dimensions lose them; 2-D arrays read as z = 1; other ranks are refused.

Voxel size (z, y, x) in nm, the first that applies:

1. ``?voxel_size_nm=z,y,x`` on the store part of the URL (``h5:///d/a.h5?voxel_size_nm=40,4,4#/raw``);
2. the file's own: OME-NGFF dataset scale x global scale x axis unit (no unit = nm); N5
   ``pixelResolution``/``resolution`` of the dataset, else the group's times ``downsamplingFactors``
   or ``scales[0]``; precomputed ``scales[0].resolution``; TIFF OME-XML PhysicalSize*, else ImageJ
   ``unit``/``spacing`` with X/YResolution, else X/YResolution in pixels per centimetre (per inch is
   ignored), a missing z taken equal to x; PNG ``voxel_size_nm_zyx`` of ``<folder>/../../meta.json``;
   HDF5 attribute ``resolution`` (nm) or ``element_size_um`` (µm), both z, y, x;
3. None (plain Zarr arrays, uncalibrated files).

Errors are ValueError (bad URL, file, box) or FileNotFoundError (missing file, dataset, slices);
every message starts with ``field`` (e.g. "--image: ...") and names the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import operator
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from urllib.request import url2pathname

import numpy as np

Box = tuple[slice, slice, slice]
Voxel = tuple[float, float, float]
ACCEPTED = ("zarr:///abs/a.zarr, n5:///abs/a.n5, precomputed:///abs/folder, tiff:///abs/stack.tif, tiff:///abs/folder/, "
            "png:///abs/folder, h5:///abs/a.h5#/dataset (or file:// after the scheme, or a bare local path)")
_UNIT_NM = {"angstrom": 0.1, "å": 0.1, "nm": 1.0, "nanometer": 1.0, "um": 1e3, "µm": 1e3, "micron": 1e3, "micrometer": 1e3,
            "mm": 1e6, "millimeter": 1e6, "cm": 1e7, "centimeter": 1e7, "m": 1e9, "meter": 1e9}


class VolumeError(ValueError):
    """A bad URL, file or box; the message starts with the field name."""


class VolumeNotFound(FileNotFoundError):
    """A missing file, dataset or slice folder; the message starts with the field name."""


# A format's reader: (z indices, y slice, x slice) -> array [len(zs), Y, X].
ReadFn = Callable[[Sequence[int], slice, slice], np.ndarray]


@dataclass
class VolumeReader:
    url: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size_nm: Voxel | None
    _read: ReadFn = dc_field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    _field: str = dc_field(repr=False, compare=False, default="url")
    _file: str = dc_field(repr=False, compare=False, default="")

    def read(self, box: Box | None = None) -> np.ndarray:
        """The box (default: everything) as a C-order (z, y, x) array in native byte order."""
        zs, ys, xs = self._box(box if box is not None else (slice(None),) * 3, "box")
        return self._get(range(zs.start, zs.stop), ys, xs)

    def bounds(self, box: Box, name: str) -> Box:
        """``box`` with concrete [start, stop) bounds inside the volume; errors start with ``name``."""
        return resolve_box(box, self.shape, name, self._file)

    def read_slices(self, zs: Sequence[int], yx: tuple[slice, slice] | None = None) -> np.ndarray:
        """Only the z-slices ``zs`` (in that order), cut to ``yx``: [len(zs), Y, X]."""
        ys, xs = self._box((slice(None), *(yx if yx is not None else (slice(None),) * 2)), "yx")[1:]
        try:
            zl = [operator.index(z) for z in zs]
        except TypeError as e:
            raise VolumeError(f"{self._field}: zs: expected integer slice indices, got {zs!r}") from e
        bad = [z for z in zl if not 0 <= z < self.shape[0]]
        if bad:
            raise VolumeError(f"{self._field}: zs: {bad} outside the volume's z range 0:{self.shape[0]} ({self._file})")
        return self._get(zl, ys, xs)

    def _box(self, box, name: str) -> Box:
        return resolve_box(box, self.shape, f"{self._field}: {name}", self._file)

    def _get(self, zs: Sequence[int], ys: slice, xs: slice) -> np.ndarray:
        want = (len(zs), ys.stop - ys.start, xs.stop - xs.start)
        if not zs:
            return np.zeros(want, self.dtype)
        with _guard(self._field, self._file):
            a = np.asarray(self._read(zs, ys, xs))
        if a.shape != want:
            raise VolumeError(f"{self._field}: {self._file}: read {a.shape} instead of {want}")
        return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("="), copy=False))


def resolve_box(box: object, shape: Sequence[int], what: str, file: str = "") -> Box:
    """Three slices (z, y, x; bounds None or integers, step 1) -> concrete, non-empty [start, stop)
    bounds inside ``shape``; a VolumeError starting with ``what`` otherwise."""
    if not isinstance(box, (tuple, list)) or len(box) != 3 or not all(isinstance(s, slice) for s in box):
        raise VolumeError(f"{what}: expected three slices (z, y, x), got {box!r}")
    where = f" ({file})" if file else ""
    out = []
    for axis, s, n in zip("zyx", box, shape):
        try:
            a, b = (0 if s.start is None else operator.index(s.start)), (n if s.stop is None else operator.index(s.stop))
        except TypeError as e:
            raise VolumeError(f"{what}: {axis} bounds must be integers, got {s}") from e
        if s.step not in (None, 1):
            raise VolumeError(f"{what}: {axis} step must be 1, got {s.step}")
        if not 0 <= a < b <= n:
            raise VolumeError(f"{what}: {axis} range {a}:{b} is empty or outside the volume's 0:{n}{where}")
        out.append(slice(a, b))
    return tuple(out)  # type: ignore[return-value]


def open_volume(url: str, field: str = "url") -> VolumeReader:
    """Open ``url`` (see the module docstring); errors name ``field``."""
    if not isinstance(url, str) or not url:
        raise VolumeError(f"{field}: expected a volume URL or path, got {url!r}; accepted: {ACCEPTED}")
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$", url, re.S)
    scheme, rest = (m.group(1).lower(), m.group(2)) if m else ("", url)
    if scheme == "file":
        scheme, rest = "", url
    if scheme in ("http", "https", "s3", "gs", "gcs", "ftp"):
        raise VolumeError(f"{field}: only local files are supported, got {url!r}")
    if scheme and scheme not in ("zarr", "n5", "precomputed", "tiff", "png", "h5"):
        raise VolumeError(f"{field}: unknown format {scheme!r} in {url!r}; accepted: {ACCEPTED}")
    store, hash_, fragment = rest.partition("#")
    store, _, query = store.partition("?")
    if not store:
        raise VolumeError(f"{field}: no location in {url!r}; accepted: {ACCEPTED}")
    path = _local_path(store, field, url)
    override = _query_voxel(query, field, url)
    if not path.exists():
        raise VolumeNotFound(f"{field}: {path}: no such file or folder")
    scheme = scheme or _infer(path, field, url)
    if scheme != "h5" and hash_:
        raise VolumeError(f"{field}: a #fragment is only meaningful for h5:// URLs, got {url!r}")
    openers = {"zarr": _open_zarr, "n5": _open_n5, "precomputed": _open_precomputed, "tiff": _open_tiff, "png": _open_png}
    shape, dtype, read, voxel = _open_h5(path, unquote(fragment), field) if scheme == "h5" else openers[scheme](path, field)
    if dtype.kind not in "buif":
        raise VolumeError(f"{field}: {path}: unsupported data type {dtype} (numbers only)")
    if 0 in shape:
        raise VolumeError(f"{field}: {path}: empty volume of shape {shape}")
    voxel = override or voxel
    if voxel is not None:  # 0.03 um -> 30.0 nm, not 30.000000000000004
        voxel = tuple(float(f"{v:.12g}") for v in voxel)
    return VolumeReader(url, tuple(int(n) for n in shape), dtype.newbyteorder("="), voxel, read, field, str(path))  # type: ignore[arg-type]


# --- URLs and helpers -------------------------------------------------------------------------


def _local_path(store: str, field: str, url: str) -> Path:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", store) and not store.startswith("file://"):
        raise VolumeError(f"{field}: only local files are supported, got {url!r}")
    if store.startswith("file://"):
        parts = urlsplit(store)
        if parts.netloc not in ("", "localhost"):
            raise VolumeError(f"{field}: only local files are supported, got host {parts.netloc!r} in {url!r}")
        return Path(url2pathname(parts.path))
    return Path(store).absolute()


def _query_voxel(query: str, field: str, url: str) -> Voxel | None:
    if not query:
        return None
    opts = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(opts) - {"voxel_size_nm"})
    if unknown:
        raise VolumeError(f"{field}: unknown URL option(s) {unknown} in {url!r}; only voxel_size_nm=z,y,x is accepted")
    return voxel_size(opts["voxel_size_nm"][-1].split(","), f"voxel_size_nm (z,y,x in nm) of {url!r}", field)


def _infer(path: Path, field: str, url: str) -> str:
    suffix = path.suffix.lower()
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        suffixes = {Path(n).suffix.lower() for n in names}
        if suffix == ".zarr" or names & {".zarray", ".zgroup", "zarr.json"}:
            return "zarr"
        if suffix == ".n5" or "attributes.json" in names:
            return "n5"
        if "info" in names:
            return "precomputed"
        if ".png" in suffixes:
            return "png"
        if suffixes & {".tif", ".tiff"}:
            return "tiff"
    elif suffix in (".tif", ".tiff"):
        return "tiff"
    elif suffix in (".h5", ".hdf5", ".hdf"):
        return "h5"
    raise VolumeError(f"{field}: cannot tell the format of {url!r}; accepted: {ACCEPTED}")


@contextmanager
def _guard(field: str, what: object) -> Iterator[None]:
    """Turns a library's exception into a VolumeError (VolumeNotFound) naming the field and file."""
    try:
        yield
    except (VolumeError, VolumeNotFound):
        raise
    except FileNotFoundError as e:
        raise VolumeNotFound(f"{field}: {what}: {e}") from e
    except Exception as e:
        raise VolumeError(f"{field}: {what}: cannot read: {type(e).__name__}: {e}") from e


def _unit_nm(unit: object) -> float | None:
    if not isinstance(unit, str):
        return None
    u = unit.strip().lower().replace("\\u00b5", "µ").replace("μ", "µ").replace("metre", "meter")
    return _UNIT_NM.get(u[:-1] if len(u) > 3 and u.endswith("s") else u)


def voxel_size(values: object, what: str, field: str) -> Voxel:
    """Three positive finite numbers (z, y, x nm, or any triple), or a VolumeError naming ``field`` and ``what``."""
    try:
        v = tuple(float(x) for x in values)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        v = ()
    if len(v) != 3 or not all(math.isfinite(x) and x > 0 for x in v):
        raise VolumeError(f"{field}: {what}: expected three positive numbers, got {values!r}")
    return v  # type: ignore[return-value]


def _read_json(path: Path, field: str) -> dict:
    if not path.is_file():
        raise VolumeNotFound(f"{field}: {path}: no such file")
    with _guard(field, path):
        doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise VolumeError(f"{field}: {path}: expected a JSON object")
    return doc


def _plain_axes(shape: Sequence[int], field: str, what: object) -> list[str | None]:
    """Axis roles of an array: leading 1s dropped, then (z, y, x) or (y, x)."""
    lead = 0
    while len(shape) - lead > 3 and shape[lead] == 1:
        lead += 1
    if len(shape) - lead not in (2, 3):
        raise VolumeError(f"{field}: {what}: expected a 3-D (z, y, x) or 2-D (y, x) array, got shape {tuple(shape)}")
    return [None] * lead + ["z", "y", "x"][3 - (len(shape) - lead):]


def _array(shape: Sequence[int], axes: list[str | None], get: Callable[[tuple], np.ndarray] | None,
           opened: Callable[[], contextlib.AbstractContextManager[Callable[[tuple], np.ndarray]]] | None = None,
           ) -> tuple[tuple[int, int, int], ReadFn]:
    """(z, y, x) shape and reader of an indexable array whose dims play ``axes`` (None: size 1, dropped),
    read through ``get``, or, for a file that must be opened to read, through the ``get`` that
    ``opened()`` yields for the length of one read (once for all the slices of a read_slices)."""
    size = dict(zip(axes, shape))
    session = opened if opened is not None else lambda: contextlib.nullcontext(get)

    def box(g: Callable[[tuple], np.ndarray], z: slice, y: slice, x: slice) -> np.ndarray:
        a = np.asarray(g(tuple({"z": z, "y": y, "x": x}[ax] if ax else 0 for ax in axes)))
        return a if "z" in size else a[None]

    def read(zs: Sequence[int], ys: slice, xs: slice) -> np.ndarray:
        with session() as g:
            if isinstance(zs, range):
                return box(g, slice(zs.start, zs.stop), ys, xs)
            return np.concatenate([box(g, slice(z, z + 1), ys, xs) for z in zs])

    return (size.get("z", 1), size["y"], size["x"]), read


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)] + [p.name]


def _slice_files(folder: Path, suffixes: tuple[str, ...], kind: str, field: str) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith(".")), key=_natural)
    if not files:
        raise VolumeNotFound(f"{field}: {folder}: no {kind} slices in this folder")
    return files


# --- Zarr, N5, precomputed -------------------------------------------------------------------


def _open_zarr(path: Path, field: str):
    import zarr

    if not any((path / n).is_file() for n in (".zarray", ".zgroup", "zarr.json")):
        raise VolumeError(f"{field}: {path}: not a Zarr array or group (no .zarray, .zgroup or zarr.json)")
    with _guard(field, path):
        node = zarr.open(store=str(path), mode="r")
    voxel = None
    if isinstance(node, zarr.Group):
        node, axes, voxel = _ome_level0(node, path, field)
    else:
        axes = _plain_axes(node.shape, field, path)
    shape, read = _array(node.shape, axes, node.__getitem__)
    return shape, np.dtype(node.dtype), read, voxel


def _ome_level0(group, path: Path, field: str):
    import zarr

    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    ms = attrs.get("multiscales", ome.get("multiscales") if isinstance(ome, dict) else None)
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        arrays = sorted(group.array_keys())[:10]
        raise VolumeError(f"{field}: {path}: a Zarr group without OME-NGFF multiscales; give one of its arrays instead ({arrays})")
    m, where = ms[0], f"{field}: {path}: multiscales[0]"
    ds = m.get("datasets")
    if not isinstance(ds, list) or not ds or not isinstance(ds[0], dict) or not isinstance(ds[0].get("path"), str):
        raise VolumeError(f"{where}.datasets: expected a list of {{path, coordinateTransformations}}, got {ds!r}")
    with _guard(field, f"{path}: multiscales[0].datasets[0].path {ds[0]['path']!r}"):
        arr = group[ds[0]["path"]]
    if not isinstance(arr, zarr.Array):
        raise VolumeError(f"{where}.datasets[0].path: {ds[0]['path']!r} is not an array")
    raw_axes = m.get("axes", ["t", "c", "z", "y", "x"][-arr.ndim:])
    if not isinstance(raw_axes, list) or len(raw_axes) != arr.ndim:
        raise VolumeError(f"{where}.axes: expected {arr.ndim} axes for array shape {arr.shape}, got {raw_axes!r}")
    names = [a.get("name") if isinstance(a, dict) else a for a in raw_axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in raw_axes]
    if [n for n in names if n in ("z", "y", "x")] not in (["z", "y", "x"], ["y", "x"]):
        raise VolumeError(f"{where}.axes: expected axes z, y, x in that order (others of size 1), got {names}")
    for n, size in zip(names, arr.shape):
        if n not in ("z", "y", "x") and size != 1:
            raise VolumeError(f"{where}.axes: axis {n!r} has {size} entries; only single-channel volumes are read "
                              "(open a single-channel array directly)")
    scale = np.ones(arr.ndim)
    for what, transforms in ((".datasets[0]", ds[0].get("coordinateTransformations")), ("", m.get("coordinateTransformations"))):
        for t in transforms or []:
            if isinstance(t, dict) and t.get("type") == "scale":
                s = t.get("scale")
                if not isinstance(s, list) or len(s) != arr.ndim or not all(isinstance(x, (int, float)) and x > 0 for x in s):
                    raise VolumeError(f"{where}{what}.coordinateTransformations: expected {arr.ndim} positive scales, got {s!r}")
                scale *= np.asarray(s, float)
    voxel = []
    for n in ("z", "y", "x"):
        i = names.index(n if n in names else "x")
        f = 1.0 if units[i] in (None, "") else _unit_nm(units[i])
        if f is None:
            raise VolumeError(f"{where}.axes: unknown unit {units[i]!r} of axis {names[i]!r}")
        voxel.append(float(scale[i] * f))
    return arr, [n if n in ("z", "y", "x") else None for n in names], tuple(voxel)


def _n5_resolution(attrs: dict, what: str, field: str) -> Voxel | None:
    """(z, y, x) nm from N5 attributes (x, y, z in the JSON), or None."""
    pr, res = attrs.get("pixelResolution"), attrs.get("resolution")
    if isinstance(pr, dict):
        f = _unit_nm(pr.get("unit") or "nm")
        if f is None:
            raise VolumeError(f"{field}: {what}: pixelResolution.unit: unknown unit {pr.get('unit')!r}")
        values = pr.get("dimensions")
        xyz = voxel_size(values[:3] if isinstance(values, list) else values, f"{what}: pixelResolution.dimensions", field)
        return tuple(v * f for v in xyz[::-1])  # type: ignore[return-value]
    for key, v in (("pixelResolution", pr), ("resolution", res)):
        if v is not None:
            return voxel_size(v[:3] if isinstance(v, list) else v, f"{what}: {key}", field)[::-1]
    return None


def _open_n5(path: Path, field: str):
    import tensorstore as ts

    attrs = _read_json(path / "attributes.json", field)
    voxel = _n5_resolution(attrs, f"{path / 'attributes.json'}", field)
    if "dimensions" not in attrs:
        group, group_voxel, path = attrs, voxel, path / "s0"
        if not (path / "attributes.json").is_file():
            raise VolumeNotFound(f"{field}: {path.parent}: an N5 group without a level s0 (give an N5 dataset or a multiscale group)")
        attrs = _read_json(path / "attributes.json", field)
        voxel = _n5_resolution(attrs, f"{path / 'attributes.json'}", field)
        scales = group.get("scales")
        factors = attrs.get("downsamplingFactors") or (scales[0] if isinstance(scales, list) and scales else None)
        if voxel is None and group_voxel is not None:
            f = (1, 1, 1) if factors is None else voxel_size(factors[:3] if isinstance(factors, list) else factors, f"{path}: downsamplingFactors", field)
            voxel = tuple(g * k for g, k in zip(group_voxel, f[::-1]))
    with _guard(field, path):
        t = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}, "open": True}, read=True).result().T
    shape, read = _array(t.shape, _plain_axes(t.shape, field, path), lambda idx: t[idx].read().result())
    return shape, t.dtype.numpy_dtype, read, voxel


def _open_precomputed(path: Path, field: str):
    import tensorstore as ts

    info_file = path / "info"
    info = _read_json(info_file, field)
    scales = info.get("scales")
    if not isinstance(scales, list) or not scales or not isinstance(scales[0], dict):
        raise VolumeError(f"{field}: {info_file}: scales: expected a non-empty list, got {scales!r}")
    if info.get("num_channels", 1) != 1:
        raise VolumeError(f"{field}: {info_file}: num_channels: only single-channel volumes are read, got {info.get('num_channels')!r}")
    voxel = voxel_size(scales[0].get("resolution"), f"{info_file}: scales[0].resolution", field)[::-1]
    with _guard(field, path):
        t = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)}, "scale_index": 0},
                    read=True).result()
        t = t.translate_to[0].T  # [x, y, z, channel] from voxel_offset -> [channel, z, y, x] from 0
    shape, read = _array(t.shape, _plain_axes(t.shape, field, path), lambda idx: t[idx].read().result())
    return shape, t.dtype.numpy_dtype, read, voxel


# --- HDF5 ------------------------------------------------------------------------------------


def _open_h5(path: Path, name: str, field: str):
    import h5py

    if not name:
        raise VolumeError(f"{field}: {path}: an HDF5 URL needs the dataset after '#', e.g. h5://{path}#/volumes/raw")
    with _guard(field, path), h5py.File(path, "r") as f:
        ds = f.get(name)
        if ds is None:
            raise VolumeNotFound(f"{field}: {path}: no dataset {name!r} in this file")
        if not isinstance(ds, h5py.Dataset):
            raise VolumeError(f"{field}: {path}: {name!r} is a group, not a dataset")
        native_shape, dtype = ds.shape, ds.dtype
        # str() first: float32 attributes (0.004) keep their decimal value instead of 0.004000000189...
        attrs = {k: [str(v) for v in np.asarray(ds.attrs[k]).ravel()] for k in ("resolution", "element_size_um") if k in ds.attrs}
    voxel = None
    for key, factor in (("resolution", 1.0), ("element_size_um", 1000.0)):
        if key in attrs:
            voxel = tuple(v * factor for v in voxel_size(attrs[key][-3:], f"{path}#{name}: attribute {key}", field))
            break

    @contextmanager
    def opened() -> Iterator[Callable[[tuple], np.ndarray]]:
        with h5py.File(path, "r") as f:
            yield f[name].__getitem__

    # One open per read: read_slices of many annotated slices would otherwise reopen the file per slice.
    shape, read = _array(native_shape, _plain_axes(native_shape, field, f"{path}#{name}"), None, opened)
    return shape, dtype, read, voxel


# --- TIFF and PNG slice stacks ---------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _tiff(path: Path, field: str) -> Iterator:
    """An open TiffFile; errors tifffile only logs (a broken IFD chain of a truncated file) are raised."""
    import tifffile

    log, collect = logging.getLogger("tifffile"), _Collect()
    log.addHandler(collect)
    try:
        with _guard(field, path), tifffile.TiffFile(path) as tf:
            yield tf
            if collect.messages:
                raise VolumeError(f"{field}: {path}: corrupt or truncated TIFF: {collect.messages[0]}")
    finally:
        log.removeHandler(collect)


def _page_info(page, path: Path, field: str) -> tuple[tuple[int, int], np.dtype]:
    dtype = page.dtype
    if page.samplesperpixel != 1 or page.imagedepth != 1 or dtype is None or dtype.kind not in "uif":
        raise VolumeError(f"{field}: {path}: page {page.index}: only single-sample grayscale pages are read "
                          f"(samples per pixel {page.samplesperpixel}, data type {dtype})")
    return (page.imagelength, page.imagewidth), dtype


def _page_array(tf, index: int, path: Path, field: str) -> np.ndarray:
    page = tf.pages[index]
    end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
    if end > tf.filehandle.size:
        raise VolumeError(f"{field}: {path}: truncated TIFF: page {index} needs {end} bytes, the file has {tf.filehandle.size}")
    return page.asarray()  # imagecodecs (a dependency) decodes LZW, zstd, JPEG, ... for tifffile


def _tiff_voxel(tf, page) -> Voxel | None:
    if tf.is_ome and tf.ome_metadata:
        pixels = next((e for e in ET.fromstring(tf.ome_metadata).iter() if e.tag.endswith("Pixels")), None)
        a = {} if pixels is None else pixels.attrib
        size = {d: float(a[f"PhysicalSize{d}"]) * (_unit_nm(a.get(f"PhysicalSize{d}Unit", "µm")) or math.nan)
                for d in "XYZ" if f"PhysicalSize{d}" in a}
        if "X" in size:
            v = (size.get("Z", size["X"]), size.get("Y", size["X"]), size["X"])
            if all(math.isfinite(x) and x > 0 for x in v):
                return v
    tags = page.tags
    xr, yr = (tags[k].value if k in tags else None for k in ("XResolution", "YResolution"))
    if not (isinstance(xr, tuple) and xr[0] > 0 and xr[1] > 0):
        return None
    yr = yr if isinstance(yr, tuple) and yr[0] > 0 and yr[1] > 0 else xr
    ij = tf.imagej_metadata or {}
    factor, spacing = _unit_nm(ij.get("unit")), ij.get("spacing")
    if factor is None:
        if "ResolutionUnit" not in tags or int(tags["ResolutionUnit"].value) != 3:  # 3: centimetre
            return None
        factor, spacing = 1e7, None
    x, y = factor * xr[1] / xr[0], factor * yr[1] / yr[0]
    z = factor * float(spacing) if isinstance(spacing, (int, float)) and spacing > 0 else x
    return (z, y, x)


def _open_tiff(path: Path, field: str):
    if path.is_dir():
        files = _slice_files(path, (".tif", ".tiff"), "TIFF", field)
        with _tiff(files[0], field) as tf:
            (h, w), dtype = _page_info(tf.pages[0], files[0], field)
            voxel = _tiff_voxel(tf, tf.pages[0])

        def load(f: Path, opened: contextlib.ExitStack):
            tf = opened.enter_context(_tiff(f, field))
            return _page_info(tf.pages[0], f, field), lambda: _page_array(tf, 0, f, field)

        return (len(files), h, w), dtype, _slice_stack_reader(files, ((h, w), dtype), load, field), voxel

    with _tiff(path, field) as tf:
        pages = [p for p in tf.pages if not p.is_reduced]
        if not pages:
            raise VolumeError(f"{field}: {path}: no pages")
        (h, w), dtype = _page_info(pages[0], path, field)
        for p in pages[1:]:
            if _page_info(p, path, field) != ((h, w), dtype):
                raise VolumeError(f"{field}: {path}: page {p.index} is {p.imagelength} x {p.imagewidth} {p.dtype}, page 0 {h} x {w} {dtype}")
        index = [p.index for p in pages]
        voxel = _tiff_voxel(tf, pages[0])

    def read(zs: Sequence[int], ys: slice, xs: slice) -> np.ndarray:
        with _tiff(path, field) as tf:
            return np.stack([_page_array(tf, index[z], path, field)[ys, xs] for z in zs])

    return (len(index), h, w), dtype, read, voxel


_PNG_MODES = {"L": np.dtype(np.uint8), "I;16": np.dtype(np.uint16), "I;16B": np.dtype(np.uint16), "I;16L": np.dtype(np.uint16)}


def _png(f: Path, field: str, opened: contextlib.ExitStack):
    """An open PNG slice (closed with ``opened``) and its ((h, w), dtype); refuses other images."""
    from PIL import Image

    with _guard(field, f):
        im = opened.enter_context(Image.open(f))
    if im.format != "PNG" or im.mode not in _PNG_MODES:
        raise VolumeError(f"{field}: {f}: expected an 8/16-bit grayscale PNG, got {im.format} mode {im.mode}")
    return im, ((im.height, im.width), _PNG_MODES[im.mode])


def _slice_stack_reader(files: list[Path], first: tuple, load: Callable, field: str) -> ReadFn:
    """Reader of a one-file-per-slice stack: ``load(file, opened)`` opens a slice once (entering it on the
    ExitStack ``opened``) and returns (((h, w), dtype), decode); every slice must match the first one's
    ``first``."""

    def read(zs: Sequence[int], ys: slice, xs: slice) -> np.ndarray:
        out = []
        for z in zs:
            with contextlib.ExitStack() as opened:
                header, decode = load(files[z], opened)
                if header != first:
                    (hz, wz), dz = header
                    raise VolumeError(f"{field}: {files[z]}: slice is {hz} x {wz} {dz}, the first slice ({files[0].name}) "
                                      f"{first[0][0]} x {first[0][1]} {first[1]}")
                with _guard(field, files[z]):
                    out.append(decode()[ys, xs])
        return np.stack(out)

    return read


def _open_png(path: Path, field: str):
    if not path.is_dir():
        raise VolumeError(f"{field}: {path}: png:// needs a folder of PNG slices")
    files = _slice_files(path, (".png",), "PNG", field)
    with contextlib.ExitStack() as first:
        _, ((h, w), dtype) = _png(files[0], field, first)
    meta, voxel = path.parent.parent / "meta.json", None
    if meta.is_file():
        doc = _read_json(meta, field)
        if "voxel_size_nm_zyx" in doc:
            voxel = voxel_size(doc["voxel_size_nm_zyx"], f"{meta}: voxel_size_nm_zyx", field)

    def load(f: Path, opened: contextlib.ExitStack):
        im, header = _png(f, field, opened)
        return header, lambda: np.asarray(im)

    return (len(files), h, w), dtype, _slice_stack_reader(files, ((h, w), dtype), load, field), voxel


def intensity_window(text: str, field: str = "--intensity-window") -> tuple[float, float]:
    """``"LOW,HIGH"``: the raw values shown as black and white (finite, HIGH > LOW), or a VolumeError naming ``field``."""
    parts = str(text).split(",")
    try:
        low, high = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        low = high = math.nan
    if not (math.isfinite(low) and math.isfinite(high)):
        raise VolumeError(f"{field}: expected LOW,HIGH (two finite numbers), got {text!r}")
    if not high > low:
        raise VolumeError(f"{field}: HIGH ({high:g}) must be greater than LOW ({low:g})")
    return low, high


def to_uint8(values: np.ndarray, window: tuple[float, float] | None, field: str = "--intensity-window") -> np.ndarray:
    """Raw image values as the 8-bit EM intensities the models take:
    ``floor(clip((v - low) / (high - low), 0, 1) * 255 + 0.5)``, NaN -> 0 (the server's src/intensity.ts
    computes the same in the same float64 operations). Without a window only uint8 passes (as stored);
    other types raise a VolumeError naming ``field``. Works slab by slab, so the float64 intermediate
    stays small next to the output."""
    a = np.asarray(values)
    if window is None:
        if a.dtype == np.uint8:
            return a
        raise VolumeError(f"{field}: the volume is {a.dtype} and the models take 8-bit EM intensities: give the raw values "
                          "shown as black and white as LOW,HIGH (e.g. the contrast range you use in Neuroglancer)")
    if a.dtype.kind not in "uif":
        raise VolumeError(f"{field}: cannot window {a.dtype} values")
    low, high = window
    out = np.empty(a.shape, np.uint8)
    flat_in, flat_out = a.reshape(-1), out.reshape(-1)
    step = 1 << 22
    for i in range(0, flat_in.size, step):
        t = (flat_in[i:i + step].astype(np.float64) - low) / (high - low)
        flat_out[i:i + step] = np.floor(np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0) * 255.0 + 0.5)
    return out
