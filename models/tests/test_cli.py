"""`python -m spatialsam`: help for every subcommand, argument parsing, errors as exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spatialsam.cli import build_parser, main, parse_box
from spatialsam.data import default_data_root
from spatialsam.dualtrack import DualTrackConfig


def test_help_in_a_real_process():
    r = subprocess.run([sys.executable, "-m", "spatialsam", "adapt", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: python -m spatialsam adapt" in r.stdout


@pytest.mark.parametrize("sub", ["train-unet", "export-unet", "export-propagator", "eval", "adapt"])
def test_help_of_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([sub, "--help"])
    assert e.value.code == 0
    assert "usage: python -m spatialsam " + sub in capsys.readouterr().out


def test_parse_box():
    assert parse_box("0:32,:,10:20") == (slice(0, 32), slice(None), slice(10, 20))
    assert parse_box(None) == (slice(None),) * 3
    for bad in ("0:32,:", "a:b,:,:", "5,:,:"):
        with pytest.raises(ValueError, match="box"):
            parse_box(bad)


def test_bad_arguments_give_a_clear_error(tmp_path, capsys):
    assert main(["train-unet", "--config", "no_such_config", "--out", str(tmp_path)]) == 2
    assert "config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["adapt"])  # --out is required


def test_adapt_defaults_are_the_anchored_learned_stem_loop(capsys):
    # The configuration the benchmark measured best (Lucchi++ 1/64): learned stem, anchored SDF track,
    # three rounds. The CLI, the benchmark and DualTrackConfig must agree on it.
    a = build_parser().parse_args(["adapt", "--out", "x"])
    assert (a.rounds, a.unet_config, a.pseudo_loss_weight, a.pseudo_band_nm) == (3, "unet3d_lucchi_learned", 0.5, 20.0)
    cfg = DualTrackConfig()
    assert (cfg.rounds, cfg.unet_config, cfg.pseudo_loss_weight, cfg.pseudo_band_nm) == (3, "unet3d_lucchi_learned", 0.5, 20.0)
    off = build_parser().parse_args(["adapt", "--out", "x", "--pseudo-loss-weight", "off", "--pseudo-band-nm", "0"])
    assert off.pseudo_loss_weight is None and off.pseudo_band_nm == 0.0
    assert DualTrackConfig(pseudo_loss_weight=off.pseudo_loss_weight, pseudo_band_nm=0.0).pseudo_loss_weight is None
    assert a.lr_schedule == "constant"
    assert build_parser().parse_args(["adapt", "--out", "x", "--lr-schedule", "cosine"]).lr_schedule == "cosine"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["adapt", "--out", "x", "--lr-schedule", "linear"])
    assert "--lr-schedule" in capsys.readouterr().err
    for bad in ("0", "1.5", "-0.1", "half"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["adapt", "--out", "x", "--pseudo-loss-weight", bad])
        assert e.value.code == 2
        assert "--pseudo-loss-weight" in capsys.readouterr().err
    assert a.crop_zyx is None
    assert build_parser().parse_args(["adapt", "--out", "x", "--crop-zyx", "32,128,128"]).crop_zyx == (32, 128, 128)
    for bad in ("32,128", "32,0,128", "a,b,c", "-16,128,128"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["adapt", "--out", "x", "--crop-zyx", bad])
        assert e.value.code == 2
        assert "--crop-zyx" in capsys.readouterr().err


def test_run_summary_merges_the_benchmarks_run_json(tmp_path):
    # lucchi_budget.py writes provenance (run.json) and train_unet's summary.json apart;
    # export-unet needs both (a missing "data" key once stopped the export of its (d) run).
    from spatialsam.cli import run_summary

    (tmp_path / "run.json").write_text(json.dumps({"data": "lucchi_pp/train", "budget": "1", "command": "x"}))
    (tmp_path / "summary.json").write_text(json.dumps({"step": 7, "budget": "1"}))
    s = run_summary(tmp_path)
    assert s["data"] == "lucchi_pp/train" and s["step"] == 7 and s["command"] == "x"


def test_device_and_loader_threads_are_checked_naming_the_flag(tmp_path, capsys):
    assert main(["adapt", "--out", str(tmp_path / "a"), "--device", "gpu"]) == 2
    assert "--device: expected 'cpu', 'cuda' or 'cuda:N'" in capsys.readouterr().err
    assert main(["train-unet", "--out", str(tmp_path / "t"), "--loader-threads", "-2"]) == 2
    assert "--loader-threads: must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "t").exists()


@pytest.mark.skipif(not (default_data_root() / "lucchi_pp").exists(), reason="../shared/data not present")
def test_train_unet_loader_threads_reach_the_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train-unet", "--config", "unet3d_lucchi", "--box", "0:40,0:224,0:224", "--budget", "1/8",
                 "--max-steps", "2", "--loader-threads", "2", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["loader_threads"] == 2
    assert json.loads((out / "summary.json").read_text())["device"] == "cpu"


@pytest.mark.skipif(not (default_data_root() / "lucchi_pp").exists(), reason="../shared/data not present")
def test_train_unet_resumes_to_more_steps_and_eval_scores_like_the_benchmark(tmp_path, capsys):
    """Continue a finished run to more steps (as the README's (b=)-at-3900 row), then score it with the
    benchmark's small-object filter."""
    out = tmp_path / "run"
    args = ["train-unet", "--config", "unet3d_lucchi", "--box", "0:40,0:224,0:224", "--budget", "1/8",
            "--out", str(out), "--no-progress"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "4"]) == 0
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    capsys.readouterr()
    assert main(["eval", "--run", str(out), "--box", "0:40,0:224,0:224", "--min-size", "1000", "--no-progress"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert m["min_size"] == 1000 and 0 <= m["fg_iou_filtered"] <= 1 and 0 <= m["fg_iou"] <= 1
    assert main(["eval", "--run", str(out), "--min-size", "-1"]) == 2
    assert "--min-size: must be >= 0" in capsys.readouterr().err


@pytest.mark.skipif(not (default_data_root() / "lucchi_pp").exists(), reason="../shared/data not present")
def test_eval_scores_an_adapt_folders_rounds(tmp_path, capsys):
    """`eval --run <adapt folder> [--round N]` scores that round's U-Net (round 0 of a loop started from
    a bootstrap run: the bootstrap run) with the normalisation it trained with, exactly as `eval` of the
    same weights in a train-unet folder does."""
    box = ["--box", "0:40,0:224,0:224"]
    boot = tmp_path / "boot"
    assert main(["train-unet", "--config", "unet3d_lucchi", *box, "--budget", "1/8", "--max-steps", "2",
                 "--out", str(boot), "--no-progress"]) == 0
    out = tmp_path / "adapt"
    assert main(["adapt", *box, "--budget", "1/8", "--unet-config", "unet3d_lucchi", "--bootstrap-unet", str(boot),
                 "--rounds", "1", "--unet-steps", "2", "--bootstrap-mask-steps", "2", "--mask-steps", "2",
                 "--lr-schedule", "cosine", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    # --lr-schedule is declared in the loop's config and reaches the round's U-Net training.
    assert json.loads((out / "config.json").read_text())["unet_overrides"] == {"lr_schedule": "cosine"}
    assert json.loads((out / "round_1" / "unet" / "config.json").read_text())["lr_schedule"] == "cosine"

    def scores(*args: str) -> dict:
        assert main(["eval", *args, *box, "--min-size", "0"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    last, first = scores("--run", str(out)), scores("--run", str(out), "--round", "0")
    assert scores("--run", str(out), "--round", "1") == last
    assert first == scores("--run", str(boot))
    # Round 1's weights in a train-unet-shaped folder (its normalisation from the bootstrap run) score the same.
    copy = tmp_path / "round1_as_run"
    copy.mkdir()
    (copy / "best.pt").write_bytes((out / "round_1" / "unet" / "best.pt").read_bytes())
    (copy / "summary.json").write_text((boot / "summary.json").read_text())
    assert scores("--run", str(copy)) == last
    # --auto: the round's propagator in automatic mode on the round's U-Net SDF, beside the U-Net's own scores.
    import torch

    from spatialsam.cli import eval_weights
    from spatialsam.data import load_lucchi
    from spatialsam.metrics import evaluate, instance_ap_ids
    from spatialsam.predictor import fill_from_sdf, segment_volume
    from spatialsam.train_propagator import load_checkpoint
    from spatialsam.train_unet import load_unet, predict

    # Round 0's propagator made one that finds objects (two training steps find none): the shipped
    # CDeep3M-pretrained checkpoint (its seeds and memory here come from a two-step U-Net, so it finds few).
    pre = Path(__file__).resolve().parents[1] / "pretrained" / "propagator_cdeep3m_sdf.pt"
    (out / "round_0" / "propagator" / "propagator_last.pt").write_bytes(pre.read_bytes())
    auto0 = scores("--run", str(out), "--round", "0", "--auto")
    assert {k: v for k, v in auto0.items() if k not in ("auto", "fill")} == first
    vol = load_lucchi("test").crop(slice(0, 40), slice(0, 224), slice(0, 224))
    w, mean, std = eval_weights(out, 0)
    sdf, _ = predict(load_unet(w), vol.image, mean, std)
    prop, _ = load_checkpoint(out / "round_0" / "propagator" / "propagator_last.pt")
    prop.eval()
    with torch.no_grad():
        inst = segment_volume(prop, vol.image, np.ascontiguousarray(sdf), crop=128, fill=False)
    filled = fill_from_sdf(inst, sdf)
    assert auto0["auto"] == evaluate(inst > 0, vol.mask, 0) | instance_ap_ids(inst, vol.mask, 0)
    assert auto0["fill"] == evaluate(filled > 0, vol.mask, 0) | instance_ap_ids(filled, vol.mask, 0)
    assert auto0["auto"]["fg_iou"] > 0.05  # objects found (the two-step propagators find none): its checkpoint was read
    assert scores("--run", str(out), "--round", "1", "--auto")["auto"] != auto0["auto"]
    assert main(["eval", "--run", str(boot), "--auto", *box]) == 2
    assert "--auto" in capsys.readouterr().err
    assert main(["eval", "--run", str(out), "--round", "2", *box]) == 2
    assert "--round" in capsys.readouterr().err
    assert main(["eval", "--run", str(boot), "--round", "0", *box]) == 2
    assert "not an adapt folder" in capsys.readouterr().err


TINY_UNET_YAML = """base: unet3d_demo
unet: {channels: [8, 16], pool: [[2, 2, 2]]}
crop_zyx: [8, 48, 48]
ema_decay: 0.0
"""


@pytest.fixture(scope="module")
def own_volume(tmp_path_factory):
    """A user's data as it comes: the image as a plain Zarr v3 array (no voxel size), the sparse
    annotations (slices 5 and 17 only) and a dense ground truth as HDF5 datasets with a CREMI
    ``resolution`` attribute, written by zarr-python and h5py."""
    import h5py
    import zarr

    from spatialsam.data import make_demo_volume

    d = tmp_path_factory.mktemp("own")
    image, ids = make_demo_volume((24, 128, 128), seed=3)
    z = zarr.create_array(store=str(d / "em.zarr"), shape=image.shape, chunks=(8, 64, 64), dtype="uint8", zarr_format=3)
    z[...] = image
    sparse = np.zeros_like(ids)
    sparse[[5, 17]] = ids[[5, 17]]
    with h5py.File(d / "labels.h5", "w") as f:
        for name, a in (("annotations", sparse), ("gt", ids)):
            f.create_dataset(name, data=a, chunks=(4, 64, 64), compression="gzip").attrs["resolution"] = [8.0, 8.0, 8.0]
        f.create_dataset("u16", data=image.astype(np.uint16) * 16 + 1000)  # 8-bit data in a 16-bit file
    (d / "tiny.yaml").write_text(TINY_UNET_YAML)
    return d, image, ids


def test_adapt_on_your_own_volume_then_export_both_tracks(own_volume, tmp_path, capsys):
    """`adapt --image zarr://... --labels h5://...#/annotations --slices` on a box of a volume in the
    user's own formats: only the annotated slices are read (absolute z-indices), the voxel size comes
    from the label file, run.json records the data; `export-unet` and `export-propagator` turn the
    adapt folder into the server's ONNX models, with the provenance in their manifests; `eval` scores
    it against a dense ground truth in the same file."""
    d, image, ids = own_volume
    out = tmp_path / "adapt"
    img_url, ann_url = f"zarr://{d / 'em.zarr'}", f"h5://{d / 'labels.h5'}#/annotations"
    args = ["adapt", "--image", img_url, "--labels", ann_url, "--box", "2:22,:,:", "--slices", "5,17",
            "--unet-config", str(d / "tiny.yaml"), "--rounds", "1", "--bootstrap-unet-steps", "4", "--unet-steps", "4",
            "--bootstrap-mask-steps", "1", "--mask-steps", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["annotated_slices"] == [5, 17] and run["voxel_size_nm"] == [8.0, 8.0, 8.0]
    assert img_url in run["data"] and ann_url in run["data"] and "[2:22,:,:]" in run["data"]
    pseudo = np.load(out / "round_0" / "pseudo.npz")["mask"]
    assert pseudo.shape == (20, 128, 128)
    assert np.array_equal(pseudo[[3, 15]], ids[[5, 17]] > 0)  # box-relative 3, 15 = slices 5, 17
    # Resuming the folder on other annotations is refused; nothing in it changes.
    assert main([*args[:8], "5,18", *args[9:]]) == 2
    assert "--out" in capsys.readouterr().err and json.loads((out / "run.json").read_text()) == run

    assert main(["export-unet", "--run", str(out), "--out", str(tmp_path / "unet"), "--name", "sdf_own"]) == 0
    man = json.loads((tmp_path / "unet" / "model.json").read_text())
    assert man["voxel_size_nm"] == [8.0, 8.0, 8.0]
    # By default the server runs the graph on the blocks the evaluation uses (export_unet.server_blocks).
    from spatialsam.export_unet import server_blocks
    from spatialsam.unet3d import UNetConfig
    ctx, patch = server_blocks(UNetConfig(**man["training"]["unet"]))
    assert (man["context_zyx"], man["patch_shape_zyx"]) == (list(ctx), list(patch)) and patch[0] - 2 * ctx[0] == 16
    t = man["training"]
    assert t["annotated_slices"] == [5, 17] and t["data"] == run["data"] and t["dual_track"]["round"] == 1
    assert t["steps"] == 4 and t["command"].startswith("python -m spatialsam adapt")
    assert main(["export-propagator", "--run", str(out), "--round", "0", "--out", str(tmp_path / "prop"),
                 "--name", "prop_own"]) == 0
    top = json.loads((tmp_path / "prop" / "propagator.json").read_text())
    assert top["name"] == "prop_own" and top["voxel_size_nm"] == [8.0, 8.0, 8.0]
    assert top["training"]["data"] == run["data"] and top["training"]["dual_track"]["round"] == 0
    capsys.readouterr()
    gt_url = f"h5://{d / 'labels.h5'}#/gt"
    assert main(["eval", "--run", str(out), "--image", img_url, "--labels", gt_url, "--box", "2:22,:,:"]) == 0
    m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= m["fg_iou"] <= 1 and m["n_gt"] > 0
    # train-unet on the dense labels of the same files (voxel size from the URL), then export that run.
    run2 = tmp_path / "dense"
    assert main(["train-unet", "--image", img_url + "?voxel_size_nm=10,8,8", "--labels", gt_url, "--config",
                 str(d / "tiny.yaml"), "--max-steps", "2", "--out", str(run2), "--no-progress"]) == 0
    assert json.loads((run2 / "run.json").read_text())["annotated_slices"] == "all"
    assert main(["export-unet", "--run", str(run2), "--out", str(tmp_path / "unet2"), "--name", "sdf_dense"]) == 0
    man = json.loads((tmp_path / "unet2" / "model.json").read_text())
    assert man["voxel_size_nm"] == [10.0, 8.0, 8.0] and man["training"]["data"].startswith(img_url)


def test_a_16bit_image_is_read_through_its_intensity_window(own_volume):
    """--intensity-window maps a uint16 image to exactly the uint8 volume it was made from (x16 + 1000
    with window 1000..5080), so training and scoring see what the server's models see."""
    from spatialsam.cli import build_parser, input_volume

    d, image, ids = own_volume
    h5 = d / "labels.h5"
    a = build_parser().parse_args(["adapt", "--image", f"h5://{h5}#/u16", "--labels", f"h5://{h5}#/annotations",
                                   "--slices", "5,17", "--box", "2:22,:,:", "--intensity-window", "1000,5080",
                                   "--out", str(d / "unused")])
    vol = input_volume(a, sparse=True)
    assert vol.image.dtype == np.uint8 and np.array_equal(vol.image, image[2:22])
    assert vol.slices == [5, 17] and "window 1000,5080" in vol.name


def test_own_volume_inputs_are_checked_naming_the_flag(own_volume, tmp_path, capsys):
    d, _, _ = own_volume
    img, h5 = f"zarr://{d / 'em.zarr'}", d / "labels.h5"
    base = ["adapt", "--out", str(tmp_path / "a"), "--no-progress"]
    cases = [
        (["--image", img], "--labels: required with --image"),
        (["--image", img, "--labels", f"h5://{h5}#/annotations"], "--slices: required with --image"),
        (["--image", f"h5://{h5}#/u16", "--labels", f"h5://{h5}#/annotations", "--slices", "5"],
         "--intensity-window: the volume is uint16"),
        (["--image", f"h5://{h5}#/u16", "--labels", f"h5://{h5}#/annotations", "--slices", "5", "--intensity-window", "9,9"],
         "--intensity-window: HIGH"),
        (["--split", "train", "--intensity-window", "0,255"], "--intensity-window: only with --image"),
        (["--image", img, "--labels", f"h5://{h5}#/annotations", "--slices", "5", "--box", "0:4,:,:"], "--slices"),
        (["--image", img, "--labels", f"h5://{h5}#/annotations", "--slices", "5", "--box", "0:99,:,:"], "--box"),
        (["--image", img, "--labels", img, "--slices", "5"], "--voxel-size"),
        (["--image", img, "--labels", img, "--slices", "5", "--voxel-size", "8,0,8"], "--voxel-size"),
        (["--labels", f"h5://{h5}#/annotations"], "--labels: only with --image"),
        (["--image", img, "--labels", f"h5://{h5}#/annotations", "--slices", "5", "--pretrained-unet",
          str(tmp_path / "nope.pt")], "--pretrained-unet: "),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "a").exists()
    assert main(["export-propagator", "--out", str(tmp_path / "p"), "--name", "p"]) == 2
    assert "--run" in capsys.readouterr().err
