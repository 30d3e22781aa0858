"""The Lucchi++ benchmark's run folders (models/bench/lucchi_budget.py): the equal-compute control
(b=) continues (b)'s finished run and equals one uninterrupted run of its length."""

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialsam.data import Volume, default_data_root, load_lucchi, make_demo_volume
from spatialsam.metrics import flicker, foreground_iou
from spatialsam.predictor import sdf_seeds

_spec = importlib.util.spec_from_file_location("lucchi_budget_runs", Path(__file__).parents[1] / "bench" / "lucchi_budget.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _args(**kw) -> argparse.Namespace:
    base = dict(seed=0, threads=1, quick=True, quick_steps=2, no_progress=True, b_steps=1500, rounds=1, unet_steps=2400,
                unet_config="unet3d_lucchi", mask_steps=400, bootstrap_mask_steps=800,
                pseudo_loss_weight=None, pseudo_band_nm=0.0, loader_threads=0, lr_schedule="constant", crop_zyx=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_defaults_are_the_anchored_learned_stem_loop():
    # Every 3D U-Net of the comparison uses the learned stem, and (a)/(c) the anchored three-round loop,
    # the same defaults as `python -m spatialsam adapt`; (b=) then trains 1500 + 3 x 2400 steps.
    a = bench.build_parser().parse_args([])
    assert (a.unet_config, a.rounds, a.pseudo_loss_weight, a.pseudo_band_nm) == ("unet3d_lucchi_learned", 3, 0.5, 20.0)
    assert bench.equal_compute_steps(a)[0] == 8700
    for memory in ("sdf", "mask"):
        cfg = bench.dualtrack_config(memory, a)
        assert (cfg.rounds, cfg.pseudo_loss_weight, cfg.pseudo_band_nm) == (3, 0.5, 20.0)
        assert cfg.unet_train_config(1).unet["stem_mode"] == "learned"
    off = bench.build_parser().parse_args(["--pseudo-loss-weight", "off", "--pseudo-band-nm", "0", "--unet-config", "unet3d_lucchi"])
    cfg = bench.dualtrack_config("sdf", off)
    assert cfg.pseudo_loss_weight is None and cfg.pseudo_band_nm == 0.0
    assert cfg.unet_train_config(1).unet.get("stem_mode", "average") == "average"


def test_equal_compute_steps_match_the_dual_tracks_sdf_track():
    assert bench.equal_compute_steps(_args(quick=False)) == (3900, 4)
    assert bench.equal_compute_steps(_args(quick=False, rounds=2, unet_steps=600))[0] == 2700


def test_continued_b_equals_one_uninterrupted_run(tmp_path, monkeypatch):
    # fp32: under the Lucchi configs' bf16 autocast this CPU's conv3d weight gradients differ in
    # the last bits from call to call, so no two bf16 runs are bit-identical (resumed or not).
    real = bench.load_train_config
    monkeypatch.setattr(bench, "load_train_config", lambda name, **kw: real(name, amp="none", **kw))
    img, lab = make_demo_volume((20, 72, 72), seed=1)
    vol = Volume(img, lab > 0, (5.0, 5.0, 5.0))
    a, slices = _args(), [4, 15]
    bench._unet("unet3d", vol, slices, tmp_path / "b", a, None, 60.0, None)  # (b): quick_steps = 2
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["step"] == 2
    bench.continue_run(tmp_path / "b", tmp_path / "b_eq")
    _, _, _, cont = bench._unet("unet3d", vol, slices, tmp_path / "b_eq", a, None, 60.0, None, quick_steps=4)
    _, _, _, once = bench._unet("unet3d", vol, slices, tmp_path / "once", a, None, 60.0, None, quick_steps=4)
    assert cont["step"] == once["step"] == 4
    c = torch.load(tmp_path / "b_eq" / "checkpoint.pt", weights_only=False)
    o = torch.load(tmp_path / "once" / "checkpoint.pt", weights_only=False)
    for k in o["model"]:
        torch.testing.assert_close(c["model"][k], o["model"][k], rtol=0, atol=0)
    for k in o["ema"]:
        torch.testing.assert_close(c["ema"][k], o["ema"][k], rtol=0, atol=0)
    # (b)'s own folder is untouched: (a) and (c) still bootstrap from its step-2 weights.
    assert torch.load(tmp_path / "b" / "best.pt", weights_only=False)["step"] == 2
    # Its CPU counts: the continuation's record includes (b)'s.
    assert cont["cpu_s"] > json.loads((tmp_path / "b" / "summary.json").read_text())["cpu_s"]
    # A second call keeps the continuation's own (newer) checkpoint.
    bench.continue_run(tmp_path / "b", tmp_path / "b_eq")
    assert torch.load(tmp_path / "b_eq" / "checkpoint.pt", weights_only=False)["state"]["step"] == 4


def test_continue_run_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="not a finished run"):
        bench.continue_run(tmp_path / "b", tmp_path / "b_eq")
    assert not (tmp_path / "b_eq").exists()


def test_unet_config_reaches_every_3d_unet(tmp_path):
    # --unet-config (e.g. the learned-stem arm) must reach (b)/(b=)/(d)'s runs and (a)/(c)'s SDF
    # track alike, or the A/B would compare different U-Nets across rows.
    a = _args(unet_config="unet3d_lucchi_learned")
    img, lab = make_demo_volume((20, 72, 72), seed=1)
    model, _, _, summ = bench._unet("unet3d", Volume(img, lab > 0, (5.0, 5.0, 5.0)), [4, 15], tmp_path / "b", a, None, 60.0, None)
    assert model.cfg.stem_mode == "learned" and summ["step"] == 2
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["unet"]["stem_mode"] == "learned"
    for memory in ("sdf", "mask"):
        cfg = bench.dualtrack_config(memory, _args(unet_config="unet3d_lucchi_learned", quick=False))
        assert cfg.unet_config == "unet3d_lucchi_learned" and cfg.propagator_memory == memory
        assert cfg.unet_train_config(1).unet["stem_mode"] == "learned"
    assert bench.dualtrack_config("sdf", _args(quick=False)).unet_train_config(1).unet.get("stem_mode", "average") == "average"
    anchored = bench.dualtrack_config("sdf", _args(quick=False, pseudo_loss_weight=0.5, pseudo_band_nm=20.0))
    assert (anchored.pseudo_loss_weight, anchored.pseudo_band_nm) == (0.5, 20.0)
    assert bench.dualtrack_config("mask", _args(quick=False)).pseudo_loss_weight is None
    # --lr-schedule reaches the SDF track's U-Net of every round of (a) and (c), beside --loader-threads.
    assert "lr_schedule" not in bench.dualtrack_config("sdf", _args(quick=False)).unet_overrides
    assert bench.dualtrack_config("sdf", _args(quick=False)).unet_train_config(2).lr_schedule == "constant"
    for memory in ("sdf", "mask"):
        cos = bench.dualtrack_config(memory, _args(quick=False, lr_schedule="cosine", loader_threads=2))
        assert cos.unet_overrides == {"lr_schedule": "cosine", "loader_threads": 2}
        assert all(cos.unet_train_config(r).lr_schedule == "cosine" for r in (0, 1, 3))


def test_a_run_folder_of_another_network_is_refused(tmp_path):
    # A re-run skips finished folders; with another --unet-config it must not silently reuse them.
    img, lab = make_demo_volume((20, 72, 72), seed=1)
    vol = Volume(img, lab > 0, (5.0, 5.0, 5.0))
    bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(), None, 60.0, None)
    with pytest.raises(ValueError, match="--unet-config: .* another network"):
        bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(unet_config="unet3d_lucchi_learned"), None, 60.0, None)
    _, _, _, again = bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(), None, 60.0, None)
    assert again["step"] == 2


def test_crop_zyx_reaches_every_3d_unet_and_a_folder_of_other_crops_is_refused(tmp_path):
    # --crop-zyx: (b) (and so (b=), which continues it, and (d)) and every round of (a)'s and (c)'s
    # SDF track train on the same crops; the 2D U-Net of (b2) keeps its own.
    img, lab = make_demo_volume((20, 96, 96), seed=1)
    vol = Volume(img, lab > 0, (5.0, 5.0, 5.0))
    crop = (16, 32, 48)
    bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(crop_zyx=crop), None, 60.0, None)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["crop_zyx"] == list(crop)
    bench._unet("unet2d", vol, [4, 15], tmp_path / "b2", _args(crop_zyx=crop), None, 60.0, None)
    assert json.loads((tmp_path / "b2" / "config.json").read_text())["crop_zyx"] == [1, 96, 96]
    for memory in ("sdf", "mask"):
        cfg = bench.dualtrack_config(memory, _args(quick=False, crop_zyx=crop))
        assert all(cfg.unet_train_config(r).crop_zyx == crop for r in (0, 1, 3))
    assert bench.dualtrack_config("sdf", _args(quick=False)).unet_train_config(1).crop_zyx == (32, 192, 192)
    # A re-run with other crops must not reuse (b) trained on these as its bootstrap.
    with pytest.raises(ValueError, match=r"--crop-zyx: .* holds a run on \[16, 32, 48\] crops"):
        bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(crop_zyx=(16, 48, 48)), None, 60.0, None)
    with pytest.raises(ValueError, match="--crop-zyx: 16,40,48 is not a valid crop of 'unet3d_lucchi'.*multiple of"):
        bench._unet("unet3d", vol, [4, 15], tmp_path / "b3", _args(crop_zyx=(16, 40, 48)), None, 60.0, None)
    assert not (tmp_path / "b3").exists()


@pytest.mark.skipif(not (default_data_root() / "lucchi_pp").exists(), reason="../shared/data not present")
def test_train_only_then_score_elsewhere(tmp_path, capsys):
    # --train-only trains the run folders (on a GPU machine, say) and scores nothing; a second run
    # on the same folders, with only what is worth copying back (weights, summaries, configs; no
    # optimiser checkpoints), trains nothing more and scores every method.
    work = tmp_path / "work"
    common = ["--quick", "--quick-steps", "2", "--methods", "b,b_eq,b2", "--work", str(work), "--no-progress"]
    assert bench.main([*common, "--train-only", "--device", "cpu"]) == 0
    assert not (work / "results.json").exists() and "--train-only" in capsys.readouterr().out
    for run, steps in (("b_1_64", 2), ("b_eq_1_64", 4), ("b2_1_64", 2)):
        summ = json.loads((work / run / "summary.json").read_text())
        assert summ["step"] == steps and summ["device"] == "cpu"
        (work / run / "checkpoint.pt").unlink()
    logs = {run: (work / run / "log.jsonl").read_text() for run in ("b_1_64", "b_eq_1_64", "b2_1_64")}
    assert bench.main(common) == 0
    rows = json.loads((work / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["b", "b_eq", "b2"]
    assert all(0.0 <= r["fg_iou"] <= 1.0 for r in rows)
    assert [r["steps"] for r in rows] == [2, 4, 2]
    for run, text in logs.items():  # nothing was trained again
        assert (work / run / "log.jsonl").read_text() == text
        assert not (work / run / "checkpoint.pt").exists()


@pytest.mark.parametrize("device, message", [("gpu", "expected 'cpu', 'cuda' or 'cuda:N'"), ("cuda:x", "expected")]
                         + ([] if torch.cuda.is_available() else [("cuda", "sees no CUDA device")]))
def test_device_is_checked_before_anything_runs(tmp_path, capsys, device, message):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--methods", "b", "--work", str(tmp_path / "w"), "--device", device])
    err = capsys.readouterr().err
    assert "--device" in err and message in err
    assert not (tmp_path / "w").exists()


def test_loader_threads_reach_every_unet(tmp_path):
    img, lab = make_demo_volume((20, 72, 72), seed=1)
    bench._unet("unet3d", Volume(img, lab > 0, (5.0, 5.0, 5.0)), [4, 15], tmp_path / "b", _args(loader_threads=3), None, 60.0, None)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["loader_threads"] == 3
    for quick in (True, False):
        cfg = bench.dualtrack_config("sdf", _args(loader_threads=2, quick=quick))
        assert cfg.unet_train_config(1).loader_threads == 2
    assert bench.dualtrack_config("sdf", _args(quick=True)).unet_train_config(1).loader_threads == 0
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--work", str(tmp_path / "w"), "--loader-threads", "-1"])


@pytest.mark.skipif(not (default_data_root() / "lucchi_pp").exists(), reason="../shared/data not present")
def test_loader_throughput_bench_prints_its_table(capsys):
    mod = _load_bench("unet_loader_throughput")
    assert mod.main(["--threads", "0,2", "--batches", "2", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "logical CPUs" in out and "| 0 |" in out and "| 2 |" in out and "1.00x" in out
    with pytest.raises(SystemExit):
        mod.main(["--threads", "-1"])


@pytest.mark.skipif(not (default_data_root() / "lucchi_pp").exists(), reason="../shared/data not present")
def test_propagate_batch_bench_prints_its_table(tmp_path, capsys):
    from spatialsam.propagator import build_propagator
    from spatialsam.train_propagator import TrainConfig as PropTrainConfig
    from spatialsam.train_propagator import save_checkpoint

    ck = tmp_path / "prop.pt"
    save_checkpoint(ck, build_propagator("tiny"), None, 0, PropTrainConfig(), [])
    mod = _load_bench("propagate_batch")
    assert mod.main(["--propagator", str(ck), "--batch", "1,8", "--reps", "1", "--box", "0:64,300:500,300:560",
                     "--crop", "64", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "logical CPUs" in out and "| 1 |" in out and "| 8 |" in out and "1.00x" in out
    flipped = [line.rsplit("|", 2)[-2].strip() for line in out.splitlines() if line.startswith("| 8 |")]
    assert flipped == ["0"]  # the batched pass gives the reference's pseudo-labels
    for bad in (["--batch", "0"], ["--box", "1:2"], ["--propagator", str(tmp_path / "none.pt")]):
        with pytest.raises(SystemExit):
            mod.main(["--propagator", str(ck), *bad])


def test_a_run_stopped_by_sigterm_resumes_instead_of_counting_as_finished(tmp_path, monkeypatch):
    img, lab = make_demo_volume((20, 72, 72), seed=1)
    vol = Volume(img, lab > 0, (5.0, 5.0, 5.0))
    real = bench.train_unet

    def stopped_by_sigterm(*args, **kw):  # what train_unet returns when a TERM arrives after step 2
        return {**real(*args, **kw), "stopped": "sigterm"}

    monkeypatch.setattr(bench, "train_unet", stopped_by_sigterm)
    bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(quick_steps=2), None, 60.0, None)
    assert not (tmp_path / "b" / "summary.json").exists()
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["state"]["step"] == 2
    monkeypatch.setattr(bench, "train_unet", real)
    _, _, _, again = bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(quick_steps=4), None, 60.0, None)
    assert again["step"] == 4 and again["stopped"] == "max_steps"
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["step"] == 4
    _, _, _, done = bench._unet("unet3d", vol, [4, 15], tmp_path / "b", _args(quick_steps=6), None, 60.0, None)
    assert done["step"] == 4  # a finished run is still skipped


def test_a_benchmark_dual_track_folder_exports_like_an_adapt_folder(tmp_path, capsys):
    """The benchmark's (a) folder records adapt's provenance (run.json), so its final SDF and mask
    tracks export to the server's models with the CLI."""
    from spatialsam.cli import main as cli

    work = tmp_path / "work"
    assert bench.main(["--quick", "--quick-steps", "2", "--methods", "b,a", "--work", str(work), "--no-progress",
                       "--train-only"]) == 0
    run = json.loads((work / "a_1_64" / "run.json").read_text())
    assert run["data"] == "lucchi_pp/train (quick crop)" and len(run["annotated_slices"]) >= 1
    assert cli(["export-unet", "--run", str(work / "a_1_64"), "--out", str(tmp_path / "u"), "--name", "a"]) == 0
    t = json.loads((tmp_path / "u" / "model.json").read_text())["training"]
    assert t["annotated_slices"] == run["annotated_slices"] and t["dual_track"]["round"] == 1
    assert cli(["export-propagator", "--run", str(work / "a_1_64"), "--out", str(tmp_path / "p"), "--name", "pa"]) == 0
    assert json.loads((tmp_path / "p" / "propagator.json").read_text())["training"]["data"] == run["data"]
    # Scored (training is skipped, being finished): the U-Net, the propagated masks alone, and the
    # server's filled automatic mode, whose foreground holds the masks' and adds the SDF's unclaimed
    # voxels (a 2-step propagator claims next to nothing, so the fill must add true voxels).
    assert bench.main(["--quick", "--quick-steps", "2", "--methods", "a", "--work", str(work), "--no-progress",
                       "--out", str(tmp_path / "scored")]) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "scored" / "results.json").read_text())["rows"]}
    assert sorted(rows) == ["a", "a_auto", "a_fill"]
    masks, filled = rows["a_auto"]["errors"], rows["a_fill"]["errors"]
    assert filled["tp"] > masks["tp"] and filled["fn"] < masks["fn"] and filled["fp"] >= masks["fp"]
    # --pretrained-propagator-sdf: (a)'s round 0 mask track starts from a checkpoint (here the first
    # run's own); the folder declares it and the rows' names say so; a checkpoint of the other memory
    # kind, or none at all, is refused naming the flag before anything trains.
    from spatialsam.atomic_files import sha256_file

    ck = work / "a_1_64" / "round_0" / "propagator" / "propagator_last.pt"
    pre_work = tmp_path / "pre"
    shutil.copytree(work / "b_1_64", pre_work / "b_1_64")
    assert bench.main(["--quick", "--quick-steps", "2", "--methods", "a", "--work", str(pre_work), "--no-progress",
                       "--pretrained-propagator-sdf", str(ck)]) == 0
    declared = json.loads((pre_work / "a_1_64" / "config.json").read_text())["pretrained"]["propagator"]
    assert declared["path"] == str(ck) and declared["sha256"] == sha256_file(ck)
    names = [r["name"] for r in json.loads((pre_work / "results.json").read_text())["rows"]]
    assert len(names) == 3 and all(n.endswith(f" (propagator pretrained on {ck})") for n in names)  # no "data" in it
    for flag, path, msg in (("--pretrained-propagator-mask", ck, "has 'sdf' memory"),
                            ("--pretrained-propagator-sdf", tmp_path / "none.pt", "not found")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            bench.main(["--quick", "--methods", "c", "--work", str(tmp_path / "refused"), flag, str(path)])
        err = capsys.readouterr().err
        assert f"{flag}: " in err and msg in err
        assert not (tmp_path / "refused" / "c_1_64").exists()
    # Where the masks lose objects (models/bench/automatic_mode_gaps.py) reads the same folder; its
    # flicker counts are the metrics' on the arrays it keeps.
    gaps = _load_bench("automatic_mode_gaps")
    cache, out = tmp_path / "gaps", tmp_path / "gaps.json"
    assert gaps.main(["--run", str(work / "a_1_64"), "--box", "0:24,0:160,0:160", "--min-size", "0", "--cache", str(cache),
                      "--json", str(out), "--reprompt", "0.5"]) == 0
    got = json.loads(out.read_text())
    sdf, inst = np.load(cache / "sdf.npy"), np.load(cache / "inst.npy")
    truth = load_lucchi("test").mask[:24, :160, :160]
    assert got["round"] == 1 and sdf.shape == inst.shape == (24, 160, 160)
    assert got["flicker_masks"] == flicker(inst > 0, truth) and got["flicker_unet"] == flicker(sdf > 0, truth)
    assert len(got["seeds"]) == len(sdf_seeds(sdf))
    for row in got["seeds"]:
        lo, hi = row["component_z"]
        assert 0 <= lo <= row["start"] <= hi < 24 and 0 <= row["not_reached"] <= hi - lo + 1
    # The re-prompt experiment scores segment_volume's masks as the metrics do, and its own.
    rp = got["reprompt"]
    assert rp["segment_volume"]["fg_iou"] == pytest.approx(foreground_iou(inst > 0, truth))
    assert rp["reprompts"] >= 0 and 0 <= rp["with re-prompts"]["fg_iou"] <= 1
    for bad in (["--reprompt", "0"], ["--reprompt", "1.5"], ["--box", "0:24,0:160"], ["--box", "5:5,0:9,0:9"],
                ["--box", "0:2,9000:9100,0:9"], ["--box", "a:b,:,:"]):
        with pytest.raises(SystemExit, match=bad[0]):
            gaps.main(["--run", str(work / "a_1_64"), *bad])
    with pytest.raises(SystemExit, match="--run"):
        gaps.main(["--run", str(work / "b_1_64")])

    # What each track put into a round's pseudo-labels (models/bench/pseudo_label_sources.py): on the
    # train crop the run trained on, its cells are the metrics' on the maps it keeps.
    src = _load_bench("pseudo_label_sources")
    cache, out = tmp_path / "sources", tmp_path / "sources.json"
    quick = "0:32,256:448,256:448"
    assert src.main(["--run", str(work / "a_1_64"), "--round", "0", "--box", quick, "--cache", str(cache), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    slices = run["annotated_slices"]
    truth = load_lucchi("train").mask[:32, 256:448, 256:448] > 0
    p_u, p_p = np.load(cache / "p_u.npy"), np.load(cache / "p_p.npy")
    with np.load(work / "a_1_64" / "round_0" / "pseudo.npz") as f:
        pseudo = f["mask"]
    assert p_u.shape == p_p.shape == pseudo.shape == (32, 192, 192) and got["annotated_slices"] == slices
    dist, near = src.nearest_annotated(32, slices)
    assert (dist[slices] == 0).all() and all(abs(z - near[z]) == dist[z] == min(abs(z - s) for s in slices) for z in range(32))
    one = dist == 1
    table = got["by_distance"]
    assert table["U-Net (P_u > 0.5)"]["1"]["iou"] == pytest.approx(foreground_iou(p_u[one] > 0.5, truth[one]))
    assert table["propagated (P_p > 0.5)"]["all"]["iou"] == pytest.approx(foreground_iou(p_p[dist > 0] > 0.5, truth[dist > 0]))
    assert table["nearest annotated slice, copied"]["1"]["iou"] == pytest.approx(foreground_iou(truth[near][one], truth[one]))
    off = dist > 0
    u = p_u[off] > 0.5
    ch = got["changes"]
    assert ch["unet_fp"] == np.count_nonzero(u & ~truth[off]) and ch["removed"] == np.count_nonzero(u & ~pseudo[off])
    assert 0 <= ch["removed_truly_background"] <= ch["removed"] and 0 <= ch["added_truly_foreground"] <= ch["added"]
    # The loop's rule recomputed from the kept maps scores as the pseudo mask the loop stored; a
    # stricter share of propagated voxels keeps a subset of its components.
    rules = got["rules"]
    loop, strict = rules["the loop's (a component any propagated voxel reaches)"], rules["components at least 30% propagated"]
    assert loop["iou"] == pytest.approx(foreground_iou(pseudo, truth))
    assert strict["fp"] <= loop["fp"] and strict["fn"] >= loop["fn"]
    # --truth-steps: a mask track of the run's kind trained on the true labels of every slice (weight 1)
    # with the round's SDF as memory; its row scores the masks it propagated (kept in the cache).
    seen = {}

    def recording(prop, image, sdf, labels, weights, mcfg, **kw):
        seen.update(labels=labels.copy(), weights=weights.copy(), sdf=sdf.copy(), steps=mcfg.steps, memory=prop.cfg.memory)
        return real(prop, image, sdf, labels, weights, mcfg, **kw)

    real, src.train_mask_track = src.train_mask_track, recording
    try:
        assert src.main(["--run", str(work / "a_1_64"), "--round", "0", "--box", quick, "--cache", str(cache), "--json", str(out),
                         "--truth-steps", "2"]) == 0
    finally:
        src.train_mask_track = real
    assert seen["steps"] == 2 and seen["memory"] == "sdf" and (seen["labels"] == truth).all() and (seen["weights"] == 1).all()
    assert np.array_equal(seen["sdf"], np.load(cache / "sdf.npy"))
    p_t = np.load(cache / "p_truth_2.npy")
    row = json.loads(out.read_text())["by_distance"]["propagated, mask track trained on the true labels (2 steps)"]
    assert p_t.shape == truth.shape and row["all"]["iou"] == pytest.approx(foreground_iou(p_t[off] > 0.5, truth[off]))
    # A run that declares a pretrained propagator (adapt --pretrained-propagator): the oracle starts
    # from those weights, as the run's round 0 did; a checkpoint that changed since is refused.
    from spatialsam.atomic_files import sha256_file
    from spatialsam.train_propagator import load_checkpoint

    conf = work / "a_1_64" / "config.json"
    kept = conf.read_text()
    pre = work / "a_1_64" / "round_0" / "propagator" / "propagator_last.pt"
    conf.write_text(json.dumps({**json.loads(kept), "pretrained": {"propagator": {"path": str(pre), "sha256": sha256_file(pre)}}}))

    def first_weights(prop, image, sdf, labels, weights, mcfg, **kw):
        seen["start"] = {k: v.clone() for k, v in prop.state_dict().items()}
        return real(prop, image, sdf, labels, weights, mcfg, **kw)

    src.train_mask_track = first_weights
    try:
        assert src.main(["--run", str(work / "a_1_64"), "--round", "0", "--box", quick, "--cache", str(cache), "--json", str(out),
                         "--truth-steps", "2"]) == 0
        start = load_checkpoint(pre)[0].state_dict()
        assert all(torch.equal(seen["start"][k], v) for k, v in start.items())
        assert (cache / "p_truth_2_pretrained.npy").exists()
        assert "propagated, mask track trained on the true labels (2 steps, from its pretrained propagator)" in \
            json.loads(out.read_text())["by_distance"]
        conf.write_text(json.dumps({**json.loads(kept), "pretrained": {"propagator": {"path": str(pre), "sha256": "0" * 64}}}))
        with pytest.raises(SystemExit, match="--truth-steps: .* no longer the file it recorded"):
            src.main(["--run", str(work / "a_1_64"), "--round", "0", "--box", quick, "--truth-steps", "2"])
    finally:
        src.train_mask_track = real
        conf.write_text(kept)
    for bad, flag in (([], "--box"), (["--box", "0:31,256:448,256:448"], "--box"), (["--box", quick, "--round", "5"], "--round"),
                      (["--box", "a:b,:,:"], "--box"), (["--box", quick, "--truth-steps", "0"], "--truth-steps")):
        with pytest.raises(SystemExit, match=flag):
            src.main(["--run", str(work / "a_1_64"), *bad])
    with pytest.raises(SystemExit, match="--run"):
        src.main(["--run", str(work / "b_1_64")])


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_step_cost():
    return _load_bench("unet_step_cost")


def test_step_cost_bench_prints_its_table_and_rejects_bad_variants(capsys):
    mod = _load_step_cost()
    assert mod.main(["--config", "unet3d_compact", "--variants", "bf16,fp32-cl", "--steps", "1", "--reps", "1",
                     "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "logical CPUs" in out and "| bf16 |" in out and "| fp32-cl |" in out and "1.00x" in out
    # Each crop size is timed with every variant, named in its row.
    assert mod.main(["--config", "unet3d_compact", "--variants", "fp32", "--crops", "16x64x64,16x32x32", "--steps", "1",
                     "--reps", "1", "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| fp32 16x64x64 |" in out and "| fp32 16x32x32 |" in out and "(16, 32, 32)" in out
    for bad in (["--variants", "bf16,nope"], ["--variants", "bf16,bf16"], ["--steps", "0"], ["--device", "tpu"],
                ["--crops", "16x64"], ["--crops", "16x64x64,16x64x64"], ["--crops", "0x64x64"], ["--crops", "axbxc"]):
        with pytest.raises(SystemExit):
            mod.main(["--config", "unet3d_compact", *bad])


def test_step_cost_variants_compute_the_same_step():
    # The benchmark compares costs, so a variant must change how a step runs, not what it computes:
    # channels-last weights and input give the float32 step's gradients. Not to 1e-5: on this CPU
    # oneDNN's channels-last fp32 convolutions are less exact (forward 2.5e-4 from float64 against
    # 1.6e-5 contiguous), so every parameter's gradient must point the same way (cosine > 0.999; a
    # different seed's net gives at most 0.65).
    mod = _load_step_cost()
    torch.set_num_threads(1)
    plain, cl = mod._Arm("fp32", "unet3d_compact", 0), mod._Arm("fp32-cl", "unet3d_compact", 0)
    w_plain, w_cl = plain.model.down[1][0].weight, cl.model.down[1][0].weight  # [16, 8, 3, 3, 3]
    assert w_cl.is_contiguous(memory_format=torch.channels_last_3d) and not w_plain.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(w_plain, w_cl) and torch.equal(plain.x, cl.x)
    plain.step()
    cl.step()
    for (name, a), (_, b) in zip(plain.model.named_parameters(), cl.model.named_parameters()):
        assert float(torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)) > 0.999, name


def test_unet_blocks_bench_tiles_like_the_server():
    ub = _load_bench("unet_blocks")
    # SdfEngine.blockShape's rule (the TS test's cases): patch - 2 * context rounded down to the
    # multiple; the default block where there is no patch or it leaves less than one multiple.
    dflt = (8, 16, 32)
    m = {"size_multiple_zyx": [1, 1, 1], "context_zyx": [48, 48, 48], "patch_shape_zyx": [32, 96, 96]}
    assert ub.server_block_shape(m, dflt) == dflt
    assert ub.server_block_shape({**m, "patch_shape_zyx": None, "context_zyx": [4, 4, 4]}, dflt) == dflt
    assert ub.server_block_shape({**m, "patch_shape_zyx": [64, 160, 160], "context_zyx": [8, 8, 8]}, dflt) == (48, 144, 144)
    m16 = {"size_multiple_zyx": [16, 16, 16], "context_zyx": [16, 48, 48]}
    assert ub.server_block_shape({**m16, "patch_shape_zyx": [50, 360, 360]}, dflt) == (16, 256, 256)
    assert ub.server_block_shape({**m16, "patch_shape_zyx": [48, 100, 352]}, dflt) == (16, 16, 256)
    # On the shipped Lucchi++ manifest the server reads exactly the patch (test_export_unet checks its shape).
    shipped = json.loads((Path(__file__).parents[1] / "sdf_unet3d_lucchi" / "model.json").read_text())
    blk = ub.server_block_shape(shipped)
    assert [b + 2 * c for b, c in zip(blk, shipped["context_zyx"])] == shipped["patch_shape_zyx"]

    # Block by block with a halo of the receptive field's half is the whole-volume result (zero
    # padding outside the volume is the conv's own), on blocks that do not divide the volume;
    # without the halo it is not.
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    run = lambda a: conv(torch.from_numpy(a)[None, None]).detach().numpy()[0, 0]  # noqa: E731
    x = np.random.default_rng(0).normal(size=(11, 13, 17)).astype(np.float32)
    whole = run(x)
    np.testing.assert_allclose(ub.run_blocks(run, x, (4, 5, 6), (1, 1, 1)), whole, atol=1e-5)
    assert np.abs(ub.run_blocks(run, x, (4, 5, 6), (0, 0, 0)) - whole).max() > 0.1

    assert ub.parse_configs("32x160x160/32x48x48, 16x256x256/16x48x48") == [((32, 160, 160), (32, 48, 48)), ((16, 256, 256), (16, 48, 48))]
    for bad in ("32x160/32x48x48", "16x256x256", "0x16x16/0x0x0", "axbxc/1x1x1"):
        with pytest.raises(ValueError, match="configs"):
            ub.parse_configs(bad)


def test_unet_blocks_bench_prints_its_table(tmp_path, capsys):
    ub = _load_bench("unet_blocks")
    from spatialsam.export_unet import export_unet
    from spatialsam.unet3d import UNetConfig, build_unet3d

    image, labels = make_demo_volume((24, 48, 48), seed=3)
    (tmp_path / "demo" / "seed_7").mkdir(parents=True)
    np.save(tmp_path / "demo" / "seed_7" / "image.npy", image)
    np.save(tmp_path / "demo" / "seed_7" / "labels.npy", labels)
    (tmp_path / "demo" / "meta.json").write_text(json.dumps({"seeds": [7], "voxel_size_nm_zyx": [8, 8, 8]}))
    torch.manual_seed(0)
    model = build_unet3d(UNetConfig(channels=(4, 8), pool=((2, 2, 2),), norm="none")).eval()
    export_unet(model, tmp_path / "unet", "tiny", 0.5, 0.2, (8.0, 8.0, 8.0), (16, 32, 32), {}, context=(4, 8, 8))
    args = ["--model", str(tmp_path / "unet"), "--demo-data", str(tmp_path / "demo"), "--configs", "8x16x16/4x4x4",
            "--min-size", "10", "--threads", "1", "--json", str(tmp_path / "rows.json")]
    assert ub.main(args) == 0
    out = capsys.readouterr().out
    assert "demo seed 7" in out and "| 8x16x16 (the manifest's) | 4x8x8 | 16x32x32 | 8.0 |" in out and "| 8x16x16 | 4x4x4 |" in out
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["manifest"] for r in rows] == [True, False] and all(0 <= r["fg_iou"] <= 1 for r in rows)
    with pytest.raises(SystemExit, match="size multiple"):
        ub.main([*args[:4], "--configs", "8x16x16/3x4x4"])
    with pytest.raises(SystemExit, match="--demo-data"):
        ub.main(["--model", str(tmp_path / "unet"), "--demo-data", str(tmp_path / "nowhere")])
