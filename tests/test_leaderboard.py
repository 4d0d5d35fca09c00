"""Leaderboard: aggregation from result files, mean rows, paper numbers beside ours, failed rows."""

from __future__ import annotations

import csv
import io

import pytest

from anobench.results.leaderboard import build_leaderboard
from anobench.results.record import read_result, write_result
from anobench.results.render import to_csv
from anobench.tasks.publish import publish


def _record(method, category, seed=0, status="ok", metrics=None, dataset="mvtec", finished="2026-01-01T00:00:00",
            label="paper"):
    rec = {"method": method, "dataset": dataset, "category": category, "seed": seed, "status": status,
           "finished_at": finished, "budget": {"label": label}}
    if status == "ok":
        rec["metrics"] = metrics
    else:
        rec["error"] = {"type": "DataError", "message": "boom"}
    return rec


def _rows(board):
    return {(r["dataset"], r["category"]): r for r in board.rows}


def test_means_textures_objects_and_paper_columns():
    results = [
        _record("patch_svdd", "carpet", metrics={"image_auroc": 0.8, "pixel_auroc": 0.9, "pro": 0.7}),
        _record("patch_svdd", "grid", metrics={"image_auroc": 0.6, "pixel_auroc": 0.7, "pro": 0.5}),
        _record("patch_svdd", "bottle", metrics={"image_auroc": 1.0, "pixel_auroc": 0.95, "pro": 0.9}),
    ]
    rows = _rows(build_leaderboard(results))
    assert rows[("mvtec", "Mean")][("patch_svdd", "image_auroc")].mean == pytest.approx((0.8 + 0.6 + 1.0) / 3)
    assert rows[("mvtec", "Texture mean")][("patch_svdd", "pro")].mean == pytest.approx(0.6)
    assert rows[("mvtec", "Object mean")][("patch_svdd", "pixel_auroc")].mean == pytest.approx(0.95)
    # Paper numbers (Patch SVDD, ACCV'20 Table 1) beside ours; paper means over the same categories.
    assert rows[("mvtec", "carpet")][("patch_svdd", "image_auroc", "paper")] == pytest.approx(0.929)
    assert rows[("mvtec", "Texture mean")][("patch_svdd", "image_auroc", "paper")] == pytest.approx((0.929 + 0.946) / 2)
    assert rows[("mvtec", "bottle")][("patch_svdd", "pro", "paper")] is None  # the paper reports no PRO


def test_seeds_average_latest_result_per_seed_wins_and_failures_show():
    results = [
        _record("m", "bottle", seed=0, metrics={"image_auroc": 0.2, "pixel_auroc": 0.2, "pro": 0.2}, finished="2026-01-01"),
        _record("m", "bottle", seed=0, metrics={"image_auroc": 0.6, "pixel_auroc": 0.6, "pro": 0.6}, finished="2026-01-02"),
        _record("m", "bottle", seed=1, metrics={"image_auroc": 0.8, "pixel_auroc": 0.8, "pro": 0.8}),
        _record("m", "cable", status="failed"),
    ]
    board = build_leaderboard(results, paper={})
    rows = _rows(board)
    cell = rows[("mvtec", "bottle")][("m", "image_auroc")]
    assert cell.mean == pytest.approx(0.7) and cell.std == pytest.approx(0.1414213, abs=1e-6)
    assert rows[("mvtec", "cable")][("m", "pro")].failed == 1
    table = list(csv.DictReader(io.StringIO(to_csv(board))))
    by_category = {r["category"]: r for r in table}
    assert by_category["cable"]["m/pro"] == "failed"
    assert by_category["bottle"]["m/image_auroc/n_seeds"] == "2"
    assert by_category["Mean"]["m/image_auroc"] == "0.700"  # the failed category does not drag the mean


def test_publish_reads_files_marks_reduced_budget_and_skips_broken(tmp_path):
    write_result(tmp_path / "runs" / "a", _record("patch_svdd", "bottle", metrics={"image_auroc": 0.9, "pixel_auroc": 0.8, "pro": 0.7}, label="smoke"))
    write_result(tmp_path / "runs" / "b", _record("patch_svdd", "weave", dataset="synthetic",
                                                 metrics={"image_auroc": 0.75, "pixel_auroc": 0.8, "pro": 0.6}, label="reduced"))
    (tmp_path / "runs" / "c").mkdir()
    (tmp_path / "runs" / "c" / "result.json").write_text("{truncated")
    board = publish(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    # the papers' form: one table per metric, methods as columns, ours (smoke budget, marked †) (paper x)
    assert "## mvtec: image AUROC" in md and "| category | patch_svdd |" in md
    assert "| bottle | 0.900† (paper 0.986) |" in md and "| bottle | 0.700† |" in md  # PRO: no paper number
    assert "## synthetic: pixel AUROC" in md and "| weave | 0.750† |" in md
    assert (tmp_path / "plots" / "mvtec_image_auroc.svg").is_file()  # a plot per metric, linked from report.html
    assert 'src="plots/mvtec_image_auroc.svg"' in (tmp_path / "report.html").read_text()
    assert "runs/c/result.json" in md and "not a readable result file" in md
    assert len(board.runs) == 2
    assert (tmp_path / "leaderboard.csv").read_text().startswith("dataset,category,kind,")


def test_read_result_names_file_with_missing_keys(tmp_path):
    path = tmp_path / "result.json"
    path.write_text('{"method": "x"}')
    with pytest.raises(ValueError, match=r"result\.json.*lacks"):
        read_result(path)


def test_model_resolution_results_are_left_out():
    gt = _record("m", "bottle", metrics={"image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.9})
    gt["evaluation"] = {"resolution": "ground_truth"}
    model_res = _record("m", "bottle", metrics={"image_auroc": 0.1, "pixel_auroc": 0.1, "pro": 0.1}, finished="2026-02-01")
    model_res["evaluation"] = {"resolution": "model"}
    rows = _rows(build_leaderboard([gt, model_res], paper={}))
    assert rows[("mvtec", "bottle")][("m", "pro")].mean == pytest.approx(0.9)


def test_multi_seed_cells_show_mean_std_and_seed_count_in_markdown_and_csv(tmp_path):
    from anobench.results.render import to_markdown

    results = [_record("m", "bottle", seed=s, metrics={"image_auroc": v, "pixel_auroc": 0.5, "pro": 0.5})
               for s, v in enumerate((0.6, 0.8, 0.7))]
    results.append(_record("m", "cable", metrics={"image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.9}))
    results += [_record("m", "screw", seed=0, metrics={"image_auroc": 0.5, "pixel_auroc": 0.5, "pro": 0.5}),
                _record("m", "screw", seed=1, metrics={"image_auroc": 0.7, "pixel_auroc": 0.5, "pro": 0.5}),
                _record("m", "screw", seed=2, status="failed")]
    for number, record in enumerate(results):
        record["_path"] = f"runs/{number}/result.json"
    board = build_leaderboard(results, paper={})
    md = to_markdown(board, source="runs/")
    assert "| bottle | 0.700 ± 0.100 (3 seeds) |" in md and "| bottle | 0.500 ± 0.000 (3 seeds) |" in md
    assert "| cable | 0.900 |" in md and "| cable | 0.900 ±" not in md  # one seed: no ± and no count
    assert "| screw | 0.600 ± 0.141 (2 seeds, 1 failed) |" in md
    by_category = {r["category"]: r for r in csv.DictReader(io.StringIO(to_csv(board)))}
    assert (by_category["bottle"]["m/image_auroc"], by_category["bottle"]["m/image_auroc/std"],
            by_category["bottle"]["m/image_auroc/n_seeds"]) == ("0.700", "0.100", "3")
    assert (by_category["cable"]["m/image_auroc/std"], by_category["cable"]["m/image_auroc/n_seeds"]) == ("", "1")


def test_semi_supervised_runs_get_their_own_column():
    """NBS saw labelled defect images: its runs never share a column with unsupervised runs of any method."""
    unsupervised = _record("nbs", "bottle", metrics={"image_auroc": 0.5, "pixel_auroc": 0.5, "pro": 0.5})
    semi = _record("nbs", "bottle", seed=1, metrics={"image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.9})
    semi["evaluation"] = {"supervision": "semi_supervised", "labelled_set": {"source": "test_split"}}
    failed = _record("nbs", "cable", status="failed")  # no evaluation block: the config says semi-supervised
    failed["config"] = {"method": {"supervision": "semi_supervised", "module": {"labelled_source": "synthetic"}}}
    board = build_leaderboard([unsupervised, semi, failed])
    row = _rows(board)[("mvtec", "bottle")]
    assert row[("nbs", "image_auroc")].mean == 0.5  # the semi-supervised 0.9 is not averaged in
    assert row[("nbs [semi-supervised: test_split]", "image_auroc")].mean == 0.9
    assert _rows(board)[("mvtec", "cable")][("nbs [semi-supervised: synthetic]", "image_auroc")].failed == 1
