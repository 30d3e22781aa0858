"""volume_io.open_volume against files written by reference libraries (the fixture generators of the
TypeScript volume tests: zarr-python, tensorstore, tifffile, Pillow, h5py), with their expected arrays."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from spatialsam.fixtures import volumes_precomputed, volumes_stacks, volumes_zarr_n5
from spatialsam.volume_io import VolumeReader, open_volume

FULL = (slice(None),) * 3


@pytest.fixture(scope="module")
def zn(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zarr_n5")
    volumes_zarr_n5.volumes(out)
    return out


@pytest.fixture(scope="module")
def pc(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("precomputed")
    volumes_precomputed.make_volumes(out)
    return out


@pytest.fixture(scope="module")
def st(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stacks")
    volumes_stacks.main(["volumes_stacks.py", str(out)])
    return out


def random_box(shape, rng) -> tuple[slice, slice, slice]:
    starts = [int(rng.integers(0, n)) for n in shape]
    return tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(starts, shape))  # type: ignore[return-value]


def check_reads(r: VolumeReader, expected: np.ndarray, seed: int = 0) -> None:
    """Whole volume, a random sub-box and scattered slices equal the expected array, native order."""
    assert r.shape == expected.shape and r.dtype == expected.dtype.newbyteorder("=")
    a = r.read()
    assert a.dtype.isnative and a.flags.c_contiguous
    np.testing.assert_array_equal(a, expected)
    rng = np.random.default_rng(seed)
    box = random_box(r.shape, rng)
    np.testing.assert_array_equal(r.read(box), expected[box])
    zs = [int(z) for z in rng.integers(0, r.shape[0], size=3)]
    np.testing.assert_array_equal(r.read_slices(zs, box[1:]), expected[zs][:, box[1], box[2]])


def bad(fn, field: str, *fragments: str, exc=ValueError) -> str:
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert msg.startswith(f"{field}: "), msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# --- Zarr, OME-NGFF, N5 ------------------------------------------------------------------------


def test_zarr_and_n5_cases_match_the_reference_writers(zn):
    cases = json.loads((zn / "manifest.json").read_text())["cases"]
    assert len(cases) >= 18
    for i, c in enumerate(cases):
        scheme = "n5" if c["format"] == "n5" else "zarr"
        r = open_volume(f"{scheme}://{zn / c['url']}")
        level = c["levels"][0]
        expected = np.load(zn / level["expected"])
        assert list(r.shape) == level["shape"], c["name"]
        check_reads(r, expected, seed=i)
        # The TS manifest gives uncalibrated arrays 1 nm; they have no voxel size here.
        calibrated = c["name"].startswith("ome") or c["name"] == "n5_multiscale"
        if calibrated:
            assert r.voxel_size_nm == pytest.approx(level["voxelSizeNm"]), c["name"]
        else:
            assert r.voxel_size_nm is None, c["name"]


def test_ome_channel_axis_and_bad_multiscales_are_refused(zn, tmp_path):
    bad(lambda: open_volume(f"zarr://{zn / 'ome05_3ch.zarr'}", "--image"), "--image", "multiscales[0].axes", "ome05_3ch.zarr")
    g = shutil.copytree(zn / "ome04.zarr", tmp_path / "g.zarr")
    attrs = json.loads((g / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    ms["axes"] = ms["axes"][::-1]
    (g / ".zattrs").write_text(json.dumps(attrs))
    bad(lambda: open_volume(f"zarr://{g}", "--image"), "--image", "multiscales[0].axes", "z, y, x")
    ms["axes"] = ms["axes"][::-1]
    ms["axes"][0]["unit"] = "parsec"
    (g / ".zattrs").write_text(json.dumps(attrs))
    bad(lambda: open_volume(f"zarr://{g}", "--image"), "--image", "parsec")
    # Angstrom units and a global scale multiply into the dataset scale.
    for a in ms["axes"]:
        a["unit"] = "angstrom"
    ms["coordinateTransformations"] = [{"type": "scale", "scale": [10, 10, 10]}]
    (g / ".zattrs").write_text(json.dumps(attrs))
    assert open_volume(f"zarr://{g}").voxel_size_nm == pytest.approx((8, 4, 4))
    (g / ".zattrs").write_text(json.dumps({}))
    bad(lambda: open_volume(f"zarr://{g}", "--labels"), "--labels", "without OME-NGFF multiscales", "'s0'")


def test_n5_group_resolution_times_downsampling_factors(zn, tmp_path):
    g = shutil.copytree(zn / "n5_multiscale.n5", tmp_path / "g.n5")
    attrs = json.loads((g / "attributes.json").read_text())
    del attrs["pixelResolution"]
    attrs.update(resolution=[4, 5, 8], scales=[[2, 2, 1], [4, 4, 2]])
    (g / "attributes.json").write_text(json.dumps(attrs))
    assert open_volume(f"n5://{g}").voxel_size_nm == pytest.approx((8, 10, 8))
    # The level's own pixelResolution wins over the group's.
    s0 = json.loads((g / "s0" / "attributes.json").read_text())
    (g / "s0" / "attributes.json").write_text(json.dumps({**s0, "pixelResolution": {"dimensions": [0.006, 0.007, 0.03], "unit": "um"}}))
    assert open_volume(f"n5://{g}").voxel_size_nm == pytest.approx((30, 7, 6))
    (g / "attributes.json").write_text(json.dumps({**attrs, "scales": {"0": 1}, "resolution": [4, -5, 8]}))
    bad(lambda: open_volume(f"n5://{g}", "--image"), "--image", "attributes.json: resolution")
    (g / "attributes.json").write_text(json.dumps({**attrs, "scales": {"0": 1}}))  # not a list: no factors
    assert open_volume(f"n5://{g}").voxel_size_nm == pytest.approx((30, 7, 6))
    (g / "s0" / "attributes.json").write_text("{not json")
    bad(lambda: open_volume(f"n5://{g}", "--image"), "--image", "s0/attributes.json", "JSONDecodeError")
    (g / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    shutil.rmtree(g / "s0")
    bad(lambda: open_volume(f"n5://{g}", "--image"), "--image", "without a level s0", exc=FileNotFoundError)


# --- Neuroglancer precomputed ------------------------------------------------------------------


def test_precomputed_cases_match_tensorstore(pc, tmp_path):
    manifest = json.loads((pc / "manifest.json").read_text())
    names = [c["name"] for c in manifest]
    assert {"image_u8_raw", "image_u16_raw", "image_f32_raw", "seg_u64_cseg_b453", "seg_u64_sharded_murmur_gzip"} <= set(names)
    for i, c in enumerate(manifest):
        s0 = c["scales"][0]
        expected = np.frombuffer((pc / s0["expected"]).read_bytes(), c["dtype"]).reshape(s0["shapeZyx"])
        r = open_volume(f"precomputed://{pc / c['name']}")
        assert r.voxel_size_nm == (40.0, 4.0, 4.0)
        check_reads(r, expected, seed=100 + i)
    # voxel_offset [3, -2, 5] (x, y, z): the volume still starts at 0.
    assert open_volume(f"precomputed://{pc / 'image_u8_raw'}").shape == (19, 23, 37)
    d = shutil.copytree(pc / "image_u8_raw", tmp_path / "rgb")
    info = json.loads((d / "info").read_text())
    (d / "info").write_text(json.dumps({**info, "num_channels": 3}))
    bad(lambda: open_volume(f"precomputed://{d}", "--image"), "--image", "num_channels", "info")


# --- TIFF, PNG, HDF5 ---------------------------------------------------------------------------

TIFF_CASES = [(f"{t}_{c}", (40, 4, 5)) for t in ("u8", "u16", "f32") for c in ("raw", "deflate")]
TIFF_CASES += [(f"{t}_lzw", None) for t in ("u8", "u16", "f32")]
TIFF_CASES += [("u16_tiled_deflate", (40, 4, 5)), ("i16_raw", None), ("u32_raw", None), ("u8_ome.ome", (30, 6, 7)),
               ("u8_rows", None), ("u16_deflate_pred", None), ("f32_bigendian", None), ("u8_mixed_strips", None), ("u16_big", None)]


@pytest.mark.parametrize(("name", "voxel"), TIFF_CASES)
def test_multipage_tiff(st, name, voxel):
    r = open_volume(f"tiff://{st / 'tiff' / name}.tif")
    check_reads(r, np.load(st / "tiff" / f"{name.replace('.ome', '')}.npy"))
    assert r.voxel_size_nm == (None if voxel is None else pytest.approx(voxel))


@pytest.mark.parametrize("compression", ["zstd", "lzw", "lzma", "packbits"])
def test_tiffs_compressed_by_other_tools(tmp_path, compression):
    """Lossless compressions other tools write (zstd, LZW, LZMA through imagecodecs; PackBits), read
    back exactly, whole and as a box."""
    a = np.random.default_rng(7).integers(0, 4096, (6, 33, 47)).astype(np.uint16)
    a[:, :10] = 100  # runs, so PackBits has something to pack
    tifffile.imwrite(tmp_path / "v.tif", a, compression=compression, photometric="minisblack")
    r = open_volume(f"tiff://{tmp_path / 'v.tif'}")
    assert r.dtype == np.uint16 and r.shape == a.shape
    assert np.array_equal(r.read(), a)
    assert np.array_equal(r.read((slice(2, 5), slice(3, 30), slice(10, 40))), a[2:5, 3:30, 10:40])


def test_tiff_and_png_slice_folders(st):
    r = open_volume(f"tiff://file://{st / 'tiff_slices'}/")  # notes.txt is ignored
    check_reads(r, np.load(st / "tiff_slices.npy"))
    assert r.voxel_size_nm == pytest.approx((8, 8, 8))  # ImageJ xy 8 nm, no spacing: z = x
    for name in ("png8", "png16", "png8_interlaced", "png16_interlaced"):
        r = open_volume(f"png://{st / name}")
        check_reads(r, np.load(st / f"{name}.npy"))
        assert r.voxel_size_nm is None
    r = open_volume(f"png://{st / 'pngds' / 'train' / 'image'}")
    check_reads(r, np.load(st / "pngds.npy"))
    assert r.voxel_size_nm == (30, 6, 6)  # from pngds/meta.json


H5_CASES = [("raw/u8_gzip", "raw_u8_gzip", (40, 4, 5)), ("raw/u16_contig", "raw_u16_contig", (40, 4, 5)),
            ("labels/u32", "labels_u32", None), ("labels/u64", "labels_u64", None), ("f32", "f32", None),
            ("plane", "plane", None), ("i8", "i8", None), ("u16_bigendian", "u16_bigendian", None), ("czyx", "czyx", None)]


@pytest.mark.parametrize(("dataset", "npy", "voxel"), H5_CASES)
def test_hdf5_datasets(st, dataset, npy, voxel):
    r = open_volume(f"h5://{st / 'h5' / 'volumes.h5'}#/{dataset}")
    check_reads(r, np.load(st / "h5" / f"{npy}.npy"))
    assert r.voxel_size_nm == (None if voxel is None else pytest.approx(voxel))


def test_hdf5_read_slices_opens_the_file_once(st, monkeypatch):
    import h5py

    opens = []
    real = h5py.File

    def counting(*args, **kwargs):
        opens.append(args[0])
        return real(*args, **kwargs)

    r = open_volume(f"h5://{st / 'h5' / 'volumes.h5'}#/raw/u8_gzip")
    expected = np.load(st / "h5" / "raw_u8_gzip.npy")
    monkeypatch.setattr(h5py, "File", counting)
    zs = [5, 0, 6, 5, 2]  # any order, repeats allowed
    np.testing.assert_array_equal(r.read_slices(zs), expected[zs])
    assert len(opens) == 1


def test_hdf5_errors(st):
    f = st / "h5" / "volumes.h5"
    bad(lambda: open_volume(f"h5://{f}#/nope", "--labels"), "--labels", "'/nope'", "volumes.h5", exc=FileNotFoundError)
    bad(lambda: open_volume(f"h5://{f}", "--labels"), "--labels", "after '#'")
    bad(lambda: open_volume(f"h5://{f}#/raw", "--labels"), "--labels", "group, not a dataset")
    bad(lambda: open_volume(f"h5://{f}#/line", "--labels"), "--labels", "3-D", "(5,)")
    bad(lambda: open_volume(f"h5://{f}#/name", "--labels"), "--labels", "3-D")
    # Percent-encoded fragment.
    assert open_volume(f"h5://{f}#%2Fraw%2Fu8_gzip").shape == (7, 33, 47)


BAD_INPUTS = [
    ("tiff://{d}/truncated.tif", "truncated.tif"),
    ("tiff://{d}/header_only.tif", "header_only.tif"),
    ("tiff://{d}/not_a_tiff.tif", "not_a_tiff.tif"),
    ("tiff://{d}/complex.tif", "complex64"),
    ("tiff://{d}/rgb.tif", "samples per pixel 3"),
    ("tiff://{d}/tiff_sizes", "b.tif"),
    ("png://{d}/png_sizes", "0001.png"),
    ("png://{d}/png_depths", "0001.png"),
    ("png://{d}/png_rgb", "mode RGB"),
    ("png://{d}/png_corrupt", "0001.png"),
    ("h5://{d}/corrupt.h5#/raw", "corrupt.h5"),
    ("h5://{d}/truncated.h5#/raw/u8_gzip", "truncated.h5"),
    ("h5://{d}/not_h5.h5#/raw", "not_h5.h5"),
    ("{d}/empty", "cannot tell the format"),
]


@pytest.mark.parametrize(("url", "fragment"), BAD_INPUTS)
def test_bad_stack_inputs_name_field_and_file(st, url, fragment):
    bad(lambda: open_volume(url.format(d=st / "bad"), "--image").read(), "--image", fragment)


def test_empty_slice_folders_are_not_found(st):
    for scheme in ("tiff", "png"):
        bad(lambda: open_volume(f"{scheme}://{st / 'bad' / 'empty'}", "--image"), "--image", "no", "empty", exc=FileNotFoundError)


def test_truncated_strip_data(tmp_path):
    a = np.arange(64 * 64, dtype=np.uint16).reshape(1, 64, 64)
    tifffile.imwrite(tmp_path / "t.tif", a, photometric="minisblack")
    raw = (tmp_path / "t.tif").read_bytes()
    cut = raw.index(a.tobytes()[:64]) + 1000  # inside the strip data
    (tmp_path / "cut.tif").write_bytes(raw[:cut])
    bad(lambda: open_volume(f"tiff://{tmp_path / 'cut.tif'}", "--image").read(), "--image", "truncated", "cut.tif")


def test_only_the_requested_slices_are_decoded(st, tmp_path):
    # A PNG folder and a deflated multi-page TIFF whose slice 5 is garbage: other slices still read.
    d = shutil.copytree(st / "png8", tmp_path / "png8")
    (d / "0005.png").write_bytes(b"garbage")
    expected = np.load(st / "png8.npy")
    r = open_volume(f"png://{d}", "--image")
    np.testing.assert_array_equal(r.read((slice(0, 5), slice(None), slice(None))), expected[:5])
    np.testing.assert_array_equal(r.read_slices([6, 0]), expected[[6, 0]])
    bad(lambda: r.read(), "--image", "0005.png")

    raw = bytearray((st / "tiff" / "u8_deflate.tif").read_bytes())
    with tifffile.TiffFile(st / "tiff" / "u8_deflate.tif") as tf:
        page = tf.pages[5]
        for o, n in zip(page.dataoffsets, page.databytecounts):
            raw[o : o + n] = b"\xff" * n
    (tmp_path / "broken.tif").write_bytes(bytes(raw))
    r = open_volume(f"tiff://{tmp_path / 'broken.tif'}", "--image")
    expected = np.load(st / "tiff" / "u8_deflate.npy")
    np.testing.assert_array_equal(r.read((slice(1, 4), slice(2, 9), slice(None))), expected[1:4, 2:9])
    np.testing.assert_array_equal(r.read_slices([6, 4, 6]), expected[[6, 4, 6]])
    bad(lambda: r.read_slices([5]), "--image", "broken.tif")


# --- read_slices, URL options, inference, bad URLs ---------------------------------------------


def test_read_slices_returns_exactly_those_slices(zn):
    r = open_volume(f"zarr://{zn / 'zarr3_gzip_u16.zarr'}")
    expected = np.load(zn / "expected" / "zarr3_gzip_u16.s0.npy")
    zs = [18, 0, 7, 7, 3]
    got = r.read_slices(zs)
    assert got.shape == (5, 30, 37) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, expected[zs])
    np.testing.assert_array_equal(r.read_slices(np.array(zs[:2]), (slice(4, 9), slice(None, 5))), expected[zs[:2], 4:9, :5])
    assert r.read_slices([]).shape == (0, 30, 37)
    bad(lambda: r.read_slices([0, 19], None), "url", "zs", "[19]")
    bad(lambda: r.read_slices([1.5]), "url", "zs")


def test_voxel_size_from_the_url_overrides_the_file(zn, st):
    r = open_volume(f"zarr://{zn / 'zarr2_raw_u8.zarr'}?voxel_size_nm=40,4,4.5")
    assert r.voxel_size_nm == (40, 4, 4.5)
    assert open_volume(f"zarr://{zn / 'ome04.zarr'}?voxel_size_nm=1,2,3").voxel_size_nm == (1, 2, 3)
    assert open_volume(f"h5://{st / 'h5' / 'volumes.h5'}?voxel_size_nm=9,8,7#/raw/u8_gzip").voxel_size_nm == (9, 8, 7)
    assert open_volume(f"png://{st / 'pngds' / 'train' / 'image'}?voxel_size_nm=1,2,3").voxel_size_nm == (1, 2, 3)
    for v in ("5,0,1", "1,2", "a,b,c", "1,2,inf", "-1,1,1", ""):
        bad(lambda v=v: open_volume(f"zarr://{zn / 'ome04.zarr'}?voxel_size_nm={v}", "--image"), "--image", "voxel_size_nm")


def test_bare_paths_and_url_spellings(zn, pc, st, monkeypatch):
    expected = np.load(zn / "expected" / "ome04.s0.npy")
    for url in (str(zn / "ome04.zarr"), f"zarr://file://{zn / 'ome04.zarr'}", f"file://{zn / 'ome04.zarr'}"):
        np.testing.assert_array_equal(open_volume(url).read(), expected)
    monkeypatch.chdir(zn)
    np.testing.assert_array_equal(open_volume("zarr://ome04.zarr").read(), expected)
    np.testing.assert_array_equal(open_volume("ome04.zarr").read(), expected)
    inferred = [
        (zn / "zarr2_raw_u8.zarr", zn / "expected" / "zarr2_raw_u8.s0.npy"),
        (zn / "n5_gzip_u16.n5", zn / "expected" / "n5_gzip_u16.s0.npy"),
        (zn / "n5_multiscale.n5", zn / "expected" / "n5_multiscale.s0.npy"),
        (st / "tiff" / "u16_deflate.tif", st / "tiff" / "u16_deflate.npy"),
        (st / "tiff_slices", st / "tiff_slices.npy"),
        (st / "png16", st / "png16.npy"),
        (f"{st / 'h5' / 'volumes.h5'}#/labels/u32", st / "h5" / "labels_u32.npy"),
    ]
    for path, npy in inferred:
        np.testing.assert_array_equal(open_volume(str(path)).read(), np.load(npy), err_msg=str(path))
    a = np.frombuffer((pc / "image_u16_raw.s0.bin").read_bytes(), np.uint16).reshape(7, 13, 21)
    np.testing.assert_array_equal(open_volume(str(pc / "image_u16_raw")).read(), a)


def test_bad_urls_and_boxes_name_the_field(zn, st):
    f = "--image"
    ome = zn / "ome04.zarr"
    bad(lambda: open_volume("foo:///x", f), f, "unknown format 'foo'", "zarr://")
    for url in ("http://example.org/a.zarr", "https://example.org/a.zarr", "zarr://s3://bucket/a.zarr", "zarr://https://h/a.zarr",
                "n5://gs://bucket/a.n5", "s3://bucket/a.zarr"):
        bad(lambda url=url: open_volume(url, f), f, "only local files")
    bad(lambda: open_volume(f"zarr://{zn / 'missing.zarr'}", f), f, "missing.zarr", exc=FileNotFoundError)
    bad(lambda: open_volume(str(st / "h5" / "volumes.h5"), f), f, "after '#'")
    bad(lambda: open_volume(f"zarr://{st / 'png8'}", f), f, "not a Zarr")
    bad(lambda: open_volume(f"zarr://{ome}#x", f), f, "fragment")
    bad(lambda: open_volume(f"zarr://{ome}?voxel=1", f), f, "unknown URL option")
    bad(lambda: open_volume(str(zn / "manifest.json"), f), f, "cannot tell the format", "h5://")
    bad(lambda: open_volume("", f), f, "accepted")
    r = open_volume(f"zarr://{ome}", f)  # (20, 34, 30)
    for box in [(slice(0, 21), slice(None), slice(None)), (slice(3, 3), slice(None), slice(None)), (slice(-1, None), slice(None), slice(None)),
                (slice(None), slice(None), slice(25, 31))]:
        bad(lambda box=box: r.read(box), f, "box", "outside")
    bad(lambda: r.read((slice(0, 4, 2), slice(None), slice(None))), f, "box", "step")
    bad(lambda: r.read((slice(0, 4),)), f, "box")
    np.testing.assert_array_equal(r.read((slice(None, 2), slice(5, None), slice(None))), np.load(zn / "expected" / "ome04.s0.npy")[:2, 5:])


@pytest.mark.parametrize("unit", ["micron", "um", "\\u00B5m"])
def test_imagej_calibration_in_microns(tmp_path, unit):
    # Fiji writes microns: X/YResolution in pixels per micron, spacing (z) in microns.
    a = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    tifffile.imwrite(tmp_path / "ij.tif", a, imagej=True, resolution=(1 / 0.004, 1 / 0.005),
                     metadata={"spacing": 0.04, "unit": unit})
    r = open_volume(f"tiff://{tmp_path / 'ij.tif'}")
    assert r.voxel_size_nm == (40.0, 5.0, 4.0) and np.array_equal(r.read(), a)
    tifffile.imwrite(tmp_path / "inch.tif", a, photometric="minisblack", resolution=(300, 300))  # print DPI
    assert open_volume(str(tmp_path / "inch.tif")).voxel_size_nm is None


def test_to_uint8_maps_a_window_to_the_8bit_range():
    """The window's ends are 0 and 255, values outside clip, the rest rounds half up; NaN is 0. The
    server's src/intensity.ts has the same cases (test/src/intensity.test.ts)."""
    from spatialsam.volume_io import to_uint8

    v = np.array([-5, 1000, 1001, 3040, 5080, 9000], np.int32)
    assert to_uint8(v, (1000, 5080)).tolist() == [0, 0, 0, 128, 255, 255]  # 4080/2/16 = 127.5 -> 128
    # 8-bit data stored as 16-bit (x16 + 1000) comes back exactly.
    x = np.arange(256, dtype=np.uint16)
    assert np.array_equal(to_uint8(x * 16 + 1000, (1000, 5080)), x.astype(np.uint8))
    half = to_uint8(np.array([1.0, 3.0, 5.0, 2.0], np.float64), (0, 510))  # 0.5, 1.5, 2.5 round up; 1.0 stays
    assert half.tolist() == [1, 2, 3, 1]
    f = to_uint8(np.array([np.nan, -np.inf, np.inf, 0.25], np.float32), (0.0, 1.0))
    assert f.tolist() == [0, 0, 255, 64] and f.dtype == np.uint8
    big = np.arange(5_000_000, dtype=np.uint32).reshape(50, 100, 1000)  # more than one slab of work
    out = to_uint8(big, (0, 4_999_999))
    assert out.shape == big.shape and out[0, 0, 0] == 0 and out[-1, -1, -1] == 255
    assert np.array_equal(out.reshape(-1)[::997], np.floor(big.reshape(-1)[::997] / 4_999_999 * 255 + 0.5).astype(np.uint8))


def test_to_uint8_without_a_window_passes_uint8_only_and_windows_are_checked():
    from spatialsam.volume_io import VolumeError, intensity_window, to_uint8

    u8 = np.arange(10, dtype=np.uint8)
    assert to_uint8(u8, None) is u8
    for dtype in ("uint16", "float32", "int16"):
        with pytest.raises(VolumeError, match=f"--intensity-window: the volume is {dtype}"):
            to_uint8(np.zeros(3, dtype), None)
    assert intensity_window("1000, 5080") == (1000.0, 5080.0)
    for bad, message in (("5,5", "greater than"), ("9,1", "greater than"), ("1", "LOW,HIGH"), ("a,b", "LOW,HIGH"),
                         ("0,inf", "LOW,HIGH"), ("nan,1", "LOW,HIGH"), ("1,2,3", "LOW,HIGH")):
        with pytest.raises(VolumeError, match=f"^--intensity-window: .*{message}"):
            intensity_window(bad)
