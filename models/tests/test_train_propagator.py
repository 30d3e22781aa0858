"""Mask-track training: a tiny run lowers the loss on a fixed batch, resume after an interruption
repeats the uninterrupted run exactly, checkpoints are atomic, bad inputs name the argument."""

import numpy as np
import pytest
import torch

from spatialsam.data import make_demo_volume
from spatialsam.propagator import build_propagator
from spatialsam.sdf import sdf_target
from spatialsam.train_propagator import (
    CHECKPOINT_NAME,
    TrainConfig,
    find_objects,
    load_checkpoint,
    run_batch,
    sample_batch,
    train_mask_track,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def volume():
    image, labels = make_demo_volume((12, 64, 64), seed=1, n_objects=3)
    sdf = sdf_target(labels > 0, (5.0, 5.0, 5.0))
    return image, sdf, labels


def _fixed_loss(model, volume, tcfg):
    image, sdf, labels = volume
    rng = np.random.default_rng(1234)
    batch = sample_batch(rng, image, sdf, find_objects(labels), np.ones(image.shape, np.float32), tcfg, model)
    with torch.no_grad():
        return run_batch(model, batch, tcfg, np.random.default_rng(0))[0].item()


def test_training_lowers_the_loss(volume):
    image, sdf, labels = volume
    tcfg = TrainConfig(steps=14, batch_size=2, crop=48, run_length=3, lr=3e-3, teacher_forcing=1.0, seed=0)
    model = build_propagator("tiny")
    before = _fixed_loss(model, volume, tcfg)
    hist = train_mask_track(model, image, sdf, labels, None, tcfg)
    after = _fixed_loss(model, volume, tcfg)
    assert len(hist) == 14 and all(np.isfinite(h["loss"]) for h in hist)
    assert after < 0.7 * before, (before, after)


def test_resume_after_interruption_repeats_the_run(tmp_path, volume):
    image, sdf, labels = volume
    tcfg = TrainConfig(steps=4, batch_size=1, crop=32, run_length=2, ckpt_every=2, seed=3)
    full = build_propagator("tiny")
    train_mask_track(full, image, sdf, labels, None, tcfg, ckpt_dir=tmp_path / "a")

    class Killed(Exception):
        pass

    def kill_at_3(parts):
        if parts["step"] == 2:  # after the checkpoint of steps 0-1, during step 2
            raise Killed

    part = build_propagator("tiny")
    with pytest.raises(Killed):
        train_mask_track(part, image, sdf, labels, None, tcfg, ckpt_dir=tmp_path / "b", log=kill_at_3)
    assert [p.name for p in (tmp_path / "b").iterdir()] == [CHECKPOINT_NAME]  # no temp files left
    resumed = build_propagator("tiny")
    hist = train_mask_track(resumed, image, sdf, labels, None, tcfg, ckpt_dir=tmp_path / "b")
    assert [h["step"] for h in hist] == [0, 1, 2, 3]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    model, meta = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert meta["step"] == 4 and not model.training


def test_weights_zero_out_the_mask_loss(volume):
    image, sdf, labels = volume
    tcfg = TrainConfig(batch_size=2, crop=32, run_length=2, w_iou=0, w_presence=0)
    model = build_propagator("tiny")
    rng = np.random.default_rng(5)
    batch = sample_batch(rng, image, sdf, find_objects(labels), np.zeros(image.shape, np.float32), tcfg, model)
    with torch.no_grad():
        loss, parts = run_batch(model, batch, tcfg, np.random.default_rng(0))
    assert parts["focal"] == 0.0  # weighted focal with zero weights; dice of an all-zero weight is 0 too
    assert parts["dice"] == pytest.approx(0.0, abs=1e-6)


def test_instance_labels_keep_their_ids():
    lab = np.zeros((2, 8, 8), np.uint32)
    lab[:, 1:3, 1:3] = 7
    lab[:, 3:5, 1:3] = 9  # touching 7: still another object
    objs = find_objects(lab)
    assert objs.comps.max() == 2 and len(objs.areas) == 2
    assert objs.areas[0].tolist() == [4, 4]


def test_bad_inputs_name_the_argument(volume):
    image, sdf, labels = volume
    model = build_propagator("tiny")
    tcfg = TrainConfig(steps=1, batch_size=1, crop=32, run_length=2)
    with pytest.raises(ValueError, match="^sdf"):
        train_mask_track(model, image, sdf[:-1], labels, None, tcfg)
    bad = sdf.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="^sdf"):
        train_mask_track(model, image, bad, labels, None, tcfg)
    with pytest.raises(ValueError, match="^labels"):
        train_mask_track(model, image, sdf, labels[:, :-1], None, tcfg)
    with pytest.raises(ValueError, match="^weights"):
        train_mask_track(model, image, sdf, labels, -np.ones(image.shape, np.float32), tcfg)
    with pytest.raises(ValueError, match="^labels"):
        train_mask_track(model, image, sdf, np.zeros_like(labels), None, tcfg)
    with pytest.raises(ValueError, match="^image"):
        train_mask_track(model, image.astype(np.float32), sdf, labels, None, tcfg)


def test_unlabelled_slices_give_no_targets(volume):
    """Sparse annotations (weight 0 off the annotated slice): the absent "GT" there must not teach
    the presence head that the object vanished."""
    image, sdf, labels = volume
    tcfg = TrainConfig(batch_size=2, crop=32, run_length=3, w_focal=0, w_dice=0, w_iou=0)
    model = build_propagator("tiny")
    w = np.zeros(image.shape, np.float32)
    sparse = np.zeros_like(labels)
    z = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    w[z], sparse[z] = 1.0, labels[z]
    batch = sample_batch(np.random.default_rng(2), image, sdf, find_objects(sparse), w, tcfg, model)
    assert batch.weights[:, 1:].sum() == 0
    with torch.no_grad():
        batch.weights[:, 0] = 0  # no labelled slice at all -> no presence loss
        _, parts = run_batch(model, batch, tcfg, np.random.default_rng(0))
    assert parts["presence"] == 0.0 and parts["loss"] == 0.0


def test_negative_clicks_land_on_other_objects():
    from spatialsam.prompt_encoder import LABEL_NEG
    from spatialsam.train_propagator import _simulate_prompt

    m = np.zeros((32, 32), bool)
    m[4:12, 4:12] = True
    others = np.zeros((32, 32), bool)
    others[20:28, 20:28] = True
    tcfg = TrainConfig(p_mask=0.0, p_box=0.0, p_neg_other=1.0, max_points=3)
    hits = 0
    for k in range(40):
        coords, labels, _ = _simulate_prompt(np.random.default_rng(k), m, tcfg, others)
        for (x, y), lab in zip(coords, labels):
            if lab == LABEL_NEG:
                assert others[int(y), int(x)]
                hits += 1
    assert hits > 0



def test_crops_hold_objects_whose_centre_of_mass_is_outside_them():
    """A U-shaped cross-section much wider than the crop (pseudo-labels can merge objects like this):
    its centre of mass lies in the empty middle, and every sampled run must still start on the object."""
    labels = np.zeros((6, 160, 160), np.uint8)
    labels[:, 4:10, 4:156] = 1  # the bottom of the U
    labels[:, 4:156, 4:10] = 1
    labels[:, 4:156, 150:156] = 1
    image = np.where(labels > 0, 90, 170).astype(np.uint8)
    model = build_propagator("tiny")
    tcfg = TrainConfig(batch_size=4, crop=32, run_length=3, p_box=0.0, p_mask=0.0)
    objs = find_objects(labels)
    for k in range(8):
        batch = sample_batch(np.random.default_rng(k), image, np.zeros(image.shape, np.float32), objs,
                             np.ones(image.shape, np.float32), tcfg, model)
        assert bool((batch.gt[:, 0].flatten(1).sum(1) > 0).all())


def test_pretraining_on_another_dataset_of_the_shared_layout(tmp_path):
    """train_propagator --dataset: the CDeep3M-style pretraining adapt --pretrained-propagator starts
    from; a real (tiny) run on PNG slices at 40 x 5.9 x 5.9 nm resampled to 5 nm pixels."""
    from conftest import write_dataset

    from spatialsam.dualtrack import DualTrackConfig, load_pretrained
    from spatialsam.train_propagator import main

    image, labels = make_demo_volume((8, 80, 80), seed=3, n_objects=3)
    write_dataset(tmp_path / "data", "sbem", image, ((labels > 0) * 255).astype(np.uint8), (40, 5.9, 5.9))
    ck = tmp_path / "pre"
    main(["--dataset", "sbem", "--data", str(tmp_path / "data"), "--xy-nm", "5", "--memory", "sdf", "--steps", "3",
          "--crop", "64", "--batch-size", "2", "--ckpt-dir", str(ck)])
    model, meta = load_checkpoint(ck / CHECKPOINT_NAME)
    assert meta["step"] == 3 and model.cfg.memory == "sdf"
    assert meta["data"].startswith("sbem/train") and "resampled in-plane" in meta["data"]
    assert "[40.0, 5.0" in meta["data"] and "no Lucchi++ label" in meta["annotation_budget"]
    # adapt --pretrained-propagator takes it (same compact config, SDF memory) and declares it.
    declared, _, prop = load_pretrained(None, ck / CHECKPOINT_NAME, DualTrackConfig())
    assert prop is not None and declared["propagator"]["path"].endswith(CHECKPOINT_NAME)
    assert declared["propagator"]["trained_on"] == meta["data"]
    for argv, msg in ((["--xy-nm", "5"], "--xy-nm: only with --dataset"),
                      (["--dataset", "sbem", "--demo-data", str(tmp_path)], "--dataset: not with --demo-data"),
                      (["--dataset", "sbem", "--xy-nm", "-1"], "--xy-nm: expected")):
        with pytest.raises(SystemExit):
            main(argv + ["--ckpt-dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="split: sbem has splits train"):
        main(["--dataset", "sbem", "--split", "val", "--data", str(tmp_path / "data"), "--ckpt-dir", str(tmp_path / "y")])
    # Fine-tuning from it (--init) records what the starting weights were trained on, so a model
    # exported from the run declares its pretraining data (and that data's licence) in its manifest.
    image2, labels2 = make_demo_volume((8, 80, 80), seed=4, n_objects=3)
    write_dataset(tmp_path / "data", "other", image2, ((labels2 > 0) * 255).astype(np.uint8), (5, 5, 5))
    main(["--dataset", "other", "--data", str(tmp_path / "data"), "--init", str(ck / CHECKPOINT_NAME), "--steps", "2",
          "--crop", "64", "--batch-size", "2", "--ckpt-dir", str(tmp_path / "tuned")])
    _, tuned = load_checkpoint(tmp_path / "tuned" / CHECKPOINT_NAME)
    assert tuned["data"].startswith("other/train") and tuned["init"].endswith(CHECKPOINT_NAME)
    assert tuned["init_training"] == {"data": meta["data"], "annotation_budget": meta["annotation_budget"],
                                      "command": meta["command"], "step": 3}
    for flag in (["--name", "x"], ["--licence", "research only"], ["--finalize", "--name", "x"]):
        with pytest.raises(SystemExit):
            main(flag + ["--ckpt-dir", str(tmp_path / "tuned")])


def test_shipped_pretrained_propagators_are_what_their_readme_says():
    """models/pretrained/: each checkpoint listed in its README is there with that sha256, memory and
    step count, loads as a propagator, and was trained on CDeep3M, not on Lucchi++."""
    import re
    from pathlib import Path

    from spatialsam.atomic_files import sha256_file

    d = Path(__file__).parents[1] / "pretrained"
    rows = re.findall(r"^\| `([^`]+\.pt)` \| (\w+) \| (\d+) \| `([0-9a-f]{64})` \|", (d / "README.md").read_text(), re.M)
    assert rows and sorted(r[0] for r in rows) == sorted(p.name for p in d.glob("*.pt"))
    for name, memory, steps, sha in rows:
        assert sha256_file(d / name) == sha
        model, meta = load_checkpoint(d / name)
        assert model.cfg.memory == memory and model.cfg.name == "compact" and meta["step"] == int(steps)
        assert meta["data"].startswith("cdeep3m_mito_sbem/train") and "lucchi" not in meta["data"].lower()
        assert f"--memory {memory}" in meta["command"] and "--dataset cdeep3m_mito_sbem" in meta["command"]


def test_shipped_research_propagator_declares_its_pretraining_and_licence():
    """models/propagator_lucchi_cdeep3m: the propagator fine-tuned on Lucchi++ from the CDeep3M-pretrained
    checkpoint says so in its manifest (what it started from, that data's use restriction), is named
    apart from propagator_lucchi (the server tells loaded propagators apart by name), and its graphs
    are the files their manifests hash."""
    import json
    from pathlib import Path

    from spatialsam.atomic_files import sha256_file

    d = Path(__file__).parents[1] / "propagator_lucchi_cdeep3m"
    top = json.loads((d / "propagator.json").read_text())
    shipped = json.loads((d.parent / "propagator_lucchi" / "propagator.json").read_text())
    assert top["name"] == d.name != shipped["name"] and top["memory"] == "sdf"
    t = top["training"]
    assert "non-profit use only" in t["licence"] and "CDeep3M" in t["licence"]
    assert t["init"].endswith("pretrained/propagator_cdeep3m_sdf.pt")
    assert t["init_training"]["data"].startswith("cdeep3m_mito_sbem/train") and t["init_training"]["step"] == 7547
    assert t["data"].startswith("Lucchi++ train") and t["steps"] == shipped["training"]["step"]
    assert "licence" in (d / "README.md").read_text().lower()
    for rel in top["graphs"].values():
        man = json.loads((d / rel).read_text())
        assert sha256_file((d / rel).parent / man["onnx"]) == man["sha256"]

