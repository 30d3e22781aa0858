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
