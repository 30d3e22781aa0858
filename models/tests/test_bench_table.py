"""The Lucchi++ benchmark's tables (models/bench/lucchi_budget.py) from result rows."""

import importlib.util
import json
from pathlib import Path

import numpy as np

from spatialsam.metrics import evaluate

_spec = importlib.util.spec_from_file_location("lucchi_budget", Path(__file__).parents[1] / "bench" / "lucchi_budget.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _row(method, pred, gt):
    return {"method": method, "name": bench.NAMES[method], "budget": "1/64", "annotated_slices": [1, 2],
            "cpu_min": 1.0, "wall_min": 1.0, **evaluate(pred, gt)}


def test_merge_writes_both_tables(tmp_path):
    gt = np.zeros((4, 20, 20), bool)
    gt[:, 2:8, 2:8] = True  # 144 voxels
    pred = gt.copy()
    pred[:, 12:17, 12:17] = True  # a 100-voxel false object
    run = {"command": "x", "machine": "m", "quick": False, "threads": 1, "min_size": 0}
    older = {"method": "d", "name": bench.NAMES["d"], "budget": "1", "annotated_slices": "all", "cpu_min": 2.0,
             "wall_min": 2.0, **{k: v for k, v in evaluate(gt, gt).items() if k != "errors"}}  # written before "errors"
    paths = []
    for i, rows in enumerate(([_row("a", pred, gt)], [older])):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps({"run": run, "rows": rows}))
        paths.append(str(p))
    text = bench.merge(paths, tmp_path / "merged" / "results.md")  # the folder is created
    assert (tmp_path / "merged" / "results.md").read_text() == text
    main, errors = text.split("Where the errors are")
    assert main.index("(d) 3D U-Net") < main.index("(a) Spatial-SAM")  # row order: (d) first
    assert f"| {144 / 244:.3f} |" in main  # fg-IoU 144 / (144 + 100)
    line = next(ln for ln in errors.splitlines() if ln.startswith("| (a)"))
    assert "| 100 (100%) | 0 (0%) | 100, 0-4 / 12-17 / 12-17 | 1.000 |" in line
    assert "(d)" not in errors  # a row without the breakdown gets no line


def test_merge_of_seeds_names_each_row_and_gives_mean_and_range(tmp_path):
    gt = np.zeros((4, 20, 20), bool)
    gt[:, 2:8, 2:8] = True  # 144 voxels
    worse = gt.copy()
    worse[:, 2:8, 2:4] = False  # 96 of 144
    base = {"machine": "m", "quick": False, "threads": 1, "min_size": 0}
    runs = [
        ({**base, "command": "lucchi_budget.py --methods a,b", "seed": 0}, [_row("a", gt, gt), _row("b", worse, gt)]),
        # written before runs recorded their seed: it comes from the command
        ({**base, "command": "lucchi_budget.py --methods a --seed 1"}, [_row("a", worse, gt)]),
    ]
    paths = []
    for i, (run, rows) in enumerate(runs):
        p = tmp_path / f"r{i}.json"
        p.write_text(json.dumps({"run": run, "rows": rows}))
        paths.append(str(p))
    text = bench.merge(paths, tmp_path / "results.md")
    main, spread = text.split("Across runs")
    a0 = main.index(f"| {bench.NAMES['a']}, seed 0 |")
    assert a0 < main.index(f"| {bench.NAMES['a']}, seed 1 |") < main.index(f"| {bench.NAMES['b']}, seed 0 |")
    lines = [ln for ln in spread.splitlines() if ln.startswith("| (")]
    assert len(lines) == 1  # (b) has one run: no spread line
    # fg-IoU 1 and 96/144: mean 0.833, range 0.667-1.000; flicker 0 in both
    assert lines[0].startswith(f"| {bench.NAMES['a']} | 1/64 | 2 (0, 1) | 0.833 (0.667-1.000) |")
    assert lines[0].endswith("| 0.0 (0.0-0.0) |")


def test_run_seed_from_the_record_or_the_command():
    assert bench.run_seed({"command": "x --seed 3", "seed": 2}) == 2
    assert bench.run_seed({"command": "x --threads 2 --seed 3 --no-progress"}) == 3
    assert bench.run_seed({"command": "x --seed=4"}) == 4
    assert bench.run_seed({"command": "x --threads 2"}) == 0


def test_rows_a_budget_cut_short_are_named_under_the_table():
    """A U-Net row whose run a CPU or time cap ended before its step count (or, for (d), before early
    stopping) gets a footnote with the step it reached and the flag to raise; finished runs get none."""
    gt = np.zeros((4, 20, 20), bool)
    gt[:, 2:8, 2:8] = True
    run = {"command": "x", "machine": "m", "quick": False, "threads": 1, "min_size": 0}
    rows = [{**_row("b", gt, gt), "steps": 1231, "stopped": "max_cpu", "max_steps": 1500},
            {**_row("b2", gt, gt), "steps": 2000, "stopped": "max_steps", "max_steps": 2000},
            {**_row("b_eq", gt, gt), "steps": 8000, "stopped": "max_time", "max_steps": 8700},
            {**_row("d", gt, gt), "budget": "1", "steps": 4000, "stopped": "max_cpu", "max_steps": 20000},
            _row("a", gt, gt)]  # no run summary of its own: never footnoted
    text = bench.table(rows, [run])
    note = next(ln for ln in text.splitlines() if ln.startswith("**Cut short:**"))
    assert f"{bench.NAMES['b']} (1/64) stopped by its CPU budget at step 1231 of 1500 (raise --minutes)" in note
    assert f"{bench.NAMES['b_eq']} (1/64) stopped by its time budget at step 8000 of 8700 (raise --b-eq-minutes)" in note
    assert f"{bench.NAMES['d']} (1) stopped by its CPU budget at step 4000, before its validation score" in note
    assert bench.NAMES["b2"] not in note and bench.NAMES["a"] not in note
    # (d) ended by its config's step ceiling has not met its stopping rule either; early stopping is its end
    d_rows = [{**_row("d", gt, gt), "budget": "1", "steps": 2500, "stopped": s, "max_steps": 2500}
              for s in ("max_steps", "early_stopping")]
    assert ("stopped by its step ceiling at step 2500, before its validation score stopped improving "
            "(raise max_steps in --unet-config)") in bench.table(d_rows[:1], [run])
    assert "Cut short" not in bench.table(d_rows[1:], [run])
    finished = [{**r, "stopped": "max_steps", "steps": r.get("max_steps")} for r in rows[:3]]
    assert "Cut short" not in bench.table(finished, [run])


def test_a_pretrained_propagators_rows_are_another_method_in_the_spread(tmp_path):
    gt = np.zeros((4, 20, 20), bool)
    gt[:, 2:8, 2:8] = True
    worse = gt.copy()
    worse[:, 2:8, 2:4] = False
    suffix = " (propagator pretrained on cdeep3m_mito_sbem/train)"
    pre = lambda pred: {**_row("a", pred, gt), "name": bench.NAMES["a"] + suffix, "name_suffix": suffix}  # noqa: E731
    base = {"machine": "m", "quick": False, "threads": 1, "min_size": 0}
    paths = []
    for seed, rows in ((0, [_row("a", gt, gt), pre(gt)]), (1, [_row("a", worse, gt), pre(worse)]), (2, [pre(gt)])):
        p = tmp_path / f"r{seed}.json"
        p.write_text(json.dumps({"run": {**base, "command": "x", "seed": seed}, "rows": rows}))
        paths.append(str(p))
    text = bench.merge([str(p) for p in paths], tmp_path / "results.md")
    main, spread = text.split("Across runs")
    assert main.index(f"| {bench.NAMES['a']}, seed 1 |") < main.index(f"| {bench.NAMES['a']}{suffix}, seed 0 |")
    lines = [ln for ln in spread.splitlines() if ln.startswith("| (")]
    assert lines[0].startswith(f"| {bench.NAMES['a']} | 1/64 | 2 (0, 1) | 0.833 (0.667-1.000) |")
    assert lines[1].startswith(f"| {bench.NAMES['a']}{suffix} | 1/64 | 3 (0, 1, 2) | 0.889 (0.667-1.000) |")
