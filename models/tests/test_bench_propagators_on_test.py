"""models/bench/propagators_on_test.py on a tiny synthetic "Lucchi++ test" split: the memory is the
exported U-Net run through onnxruntime as the server runs it (checked against the PyTorch U-Net), the
U-Net row is its own mask's score, every checkpoint gets its rows, the SDF cache is read back and a
wrong one refused, and bad arguments name the flag."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialsam.data import make_demo_volume
from spatialsam.export_unet import export_unet
from spatialsam.metrics import evaluate
from spatialsam.propagator import build_propagator, load_propagator_config
from spatialsam.train_propagator import TrainConfig, save_checkpoint
from spatialsam.unet3d import UNetConfig, build_unet3d, predict_volume

_spec = importlib.util.spec_from_file_location("propagators_on_test",
                                               Path(__file__).parents[1] / "bench" / "propagators_on_test.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

MEAN, STD = 0.5, 0.2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import write_dataset

    d = tmp_path_factory.mktemp("pot")
    image, labels = make_demo_volume((24, 64, 64), seed=5, n_objects=4)
    write_dataset(d / "data", "lucchi_pp", image, ((labels > 0) * 255).astype(np.uint8), (5, 5, 5), split="test")
    torch.manual_seed(0)
    unet = build_unet3d(UNetConfig(channels=(4, 8), pool=((2, 2, 2),), norm="batch")).eval()
    export_unet(unet, d / "unet", "sdf_unet3d_t", MEAN, STD, (5.0, 5.0, 5.0), (16, 64, 64), {})
    ckpts = []
    for i in range(2):
        torch.manual_seed(i)
        prop = build_propagator(load_propagator_config("compact", seed=i))
        save_checkpoint(d / f"p{i}.pt", prop, None, 0, TrainConfig(), [])
        ckpts.append(d / f"p{i}.pt")
    return d, image, labels > 0, unet, ckpts


def test_scores_every_checkpoint_with_the_exported_unets_sdf(setup):
    d, image, truth, unet, ckpts = setup
    out, cache = d / "res.json", d / "sdf.npy"
    assert bench.main(["--data", str(d / "data"), "--unet", str(d / "unet"), "--threads", "1", "--min-size", "10",
                       "--sdf-cache", str(cache), "--out", str(out),
                       "--ckpt", f"one={ckpts[0]}", "--ckpt", f"two={ckpts[1]}"]) == 0
    sdf = np.load(cache)
    x = torch.from_numpy((image.astype(np.float32) / 255 - MEAN) / STD)
    with torch.no_grad():
        ref = predict_volume(unet, x)[0].numpy()
    assert np.abs(sdf - ref).max() < 1e-4  # the server's block rule and onnxruntime give the PyTorch net's SDF
    res = json.loads(out.read_text())
    want = evaluate(sdf > 0, truth, 10)
    assert res["unet_alone"]["fg_iou"] == pytest.approx(want["fg_iou"]) and res["unet_alone"]["ap50"] == want["ap50"]
    assert list(res["ckpts"]) == ["one", "two"] and "bf16 in hardware" in res["machine"]
    for r in res["ckpts"].values():
        assert r["tracking_unet_sdf"]["objects"] >= 1
        for k in ("auto", "filled"):
            assert 0.0 <= r[k]["fg_iou"] <= 1.0 and {"ap50", "ap75", "ap50_ids", "ap75_ids", "flicker_slices"} <= set(r[k])
    # The cache is read, not recomputed: one holding the truth's sign scores the "U-Net" row 1.0, and
    # the filled output, which holds all of the SDF's foreground, then misses no true voxel.
    np.save(cache, np.where(truth, 0.5, -0.5).astype(np.float32))
    bench.main(["--data", str(d / "data"), "--unet", str(d / "unet"), "--threads", "1", "--min-size", "10",
                "--sdf-cache", str(cache), "--out", str(d / "res2.json"), "--ckpt", f"one={ckpts[0]}"])
    again = json.loads((d / "res2.json").read_text())
    assert again["unet_sdf"] == f"read from {cache}" and again["unet_alone"]["fg_iou"] == 1.0
    assert again["ckpts"]["one"]["filled"]["errors"]["fn"] == 0
    np.save(d / "bad.npy", np.zeros((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="--sdf-cache: .*float32 \\(24, 64, 64\\)"):
        bench.main(["--data", str(d / "data"), "--unet", str(d / "unet"), "--sdf-cache", str(d / "bad.npy"),
                    "--ckpt", f"one={ckpts[0]}"])


def test_bad_arguments_name_the_flag(setup, capsys):
    d, _, _, _, ckpts = setup
    for argv, msg in (([], "--ckpt: give at least one"),
                      (["--ckpt", "nopath"], "--ckpt: expected NAME=PATH"),
                      (["--ckpt", f"a={d / 'missing.pt'}"], "--ckpt a: .* is not a file"),
                      (["--ckpt", f"a={ckpts[0]}", "--ckpt", f"a={ckpts[1]}"], "name 'a' given twice"),
                      (["--ckpt", f"a={ckpts[0]}", "--unet", str(d)], "--unet: .* holds no model.json"),
                      (["--ckpt", f"a={ckpts[0]}", "--unet", str(d / "unet"), "--threads", "0"], "--threads: expected")):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert re.search(msg, capsys.readouterr().err), msg
