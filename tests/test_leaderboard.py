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


ALL_SEVEN = {"image_auroc": 0.9, "pixel_auroc": 0.8, "pro": 0.7, "image_ap": 0.95, "pixel_ap": 0.41,
             "image_f1_max": 0.88, "pixel_f1_max": 0.47}


def _extra_metric_records():
    results = [_record("m", "bottle", seed=0, metrics=ALL_SEVEN),
               _record("m", "bottle", seed=1, metrics={**ALL_SEVEN, "pixel_ap": 0.45}),
               _record("m", "carpet", metrics={**ALL_SEVEN, "pixel_ap": 0.2})]
    for number, record in enumerate(results):
        record["_path"] = f"runs/{number}/result.json"
    return results


def test_extra_metric_tables_only_on_request():
    from anobench.results.render import to_markdown

    default = build_leaderboard(_extra_metric_records(), paper={})
    md, table = to_markdown(default, source="runs/"), to_csv(default)
    assert "## mvtec: image AUROC" in md and "## mvtec: PRO" in md
    assert "## mvtec: image AP" not in md and "## mvtec: pixel F1-max" not in md  # the three main tables only
    assert "image_ap" not in table and "pixel_f1_max" not in table  # the CSV keeps its columns

    board = build_leaderboard(_extra_metric_records(), paper={}, metrics="image_ap,pixel_ap")
    md = to_markdown(board, source="runs/")
    assert "## mvtec: image AP" in md and "## mvtec: pixel AP" in md and "## mvtec: PRO" not in md
    pixel_ap = md.split("## mvtec: pixel AP")[1].split("##")[0]
    assert "| bottle | 0.430 ± 0.028 (2 seeds) |" in pixel_ap and "| carpet | 0.200 |" in pixel_ap
    assert "| **Mean** | 0.315 |" in pixel_ap
    by_category = {r["category"]: r for r in csv.DictReader(io.StringIO(to_csv(board)))}
    assert by_category["bottle"]["m/pixel_ap"] == "0.430" and "m/image_auroc" not in by_category["bottle"]

    every = to_markdown(build_leaderboard(_extra_metric_records(), paper={}, metrics="all"), source="runs/")
    titles = ("image AUROC", "pixel AUROC", "PRO", "image AP", "pixel AP", "image F1-max", "pixel F1-max")
    assert [line[len("## mvtec: "):] for line in every.splitlines() if line.startswith("## mvtec: ")] == list(titles)


def test_unknown_metric_is_one_clear_error(tmp_path, capsys):
    from anobench.cli import main
    from anobench.errors import AnobenchError
    from anobench.results.leaderboard import select_metrics

    assert select_metrics(None) == ("image_auroc", "pixel_auroc", "pro")
    assert select_metrics(" pixel_ap, image_ap ,pixel_ap") == ("pixel_ap", "image_ap")
    with pytest.raises(AnobenchError, match=r"unknown metric\(s\) pixel_apx; valid metrics: image_auroc, "
                                            r"pixel_auroc, pro, image_ap, pixel_ap, image_f1_max, pixel_f1_max"):
        select_metrics("image_ap,pixel_apx")
    write_result(tmp_path / "runs" / "a", {k: v for k, v in _extra_metric_records()[0].items() if k != "_path"})
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--metrics", "aupr"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "unknown metric(s) aupr; valid metrics:" in err and "or all" in err
    assert not (tmp_path / "leaderboard.md").exists()  # nothing written for a bad request


def test_leaderboard_command_prints_the_requested_tables_and_writes_the_default(tmp_path, capsys, monkeypatch):
    from anobench.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    write_result(tmp_path / "runs" / "a", {k: v for k, v in _extra_metric_records()[0].items() if k != "_path"})
    assert main(["leaderboard", "--results-dir", str(tmp_path), "--metrics", "pixel_ap,pixel_f1_max"]) == 0
    out = capsys.readouterr().out
    assert "mvtec: pixel AP" in out and "0.410" in out and "mvtec: pixel F1-max" in out and "0.470" in out
    assert "mvtec: PRO" not in out
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## mvtec: PRO" in md and "## mvtec: pixel AP" not in md  # the written files keep the default tables
    assert main(["leaderboard", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mvtec: PRO" in out and "pixel AP" not in out


NO_MASKS = {"image_auroc": 0.7, "pixel_auroc": None, "pro": None, "image_ap": 0.8, "pixel_ap": None,
            "image_f1_max": 0.75, "pixel_f1_max": None}


def test_each_dataset_has_its_own_section_and_mean_and_null_pixel_metrics_render_as_n_a():
    from anobench.results.render import NOT_COMPUTED_NOTE, to_markdown

    results = [_record("m", "bottle", metrics={"image_auroc": 0.9, "pixel_auroc": 0.8, "pro": 0.6}),
               _record("m", "default", dataset="widgets", metrics=NO_MASKS),
               _record("m", "lot2", dataset="widgets", metrics={**NO_MASKS, "image_auroc": 0.5})]
    for number, record in enumerate(results):
        record["_path"] = f"runs/{number}/result.json"
    board = build_leaderboard(results, paper={})
    rows = _rows(board)
    # MVTec AD's Mean is bottle's alone: the own dataset never enters it
    assert rows[("mvtec", "Mean")][("m", "image_auroc")].mean == 0.9
    assert rows[("mvtec", "Mean")][("m", "pro")].mean == 0.6
    assert rows[("widgets", "Mean")][("m", "image_auroc")].mean == pytest.approx(0.6)
    assert rows[("widgets", "default")]["kind"] == "other"
    assert ("widgets", "Texture mean") not in rows and ("widgets", "Object mean") not in rows
    # null = not computed (no masks): an n/a cell, and the Mean of a dataset with an n/a member is n/a
    assert rows[("widgets", "default")][("m", "pixel_auroc")].not_computed
    assert rows[("widgets", "Mean")][("m", "pixel_auroc")].mean is None
    assert rows[("widgets", "Mean")][("m", "pixel_auroc")].not_computed
    md = to_markdown(board, source="runs/")
    assert NOT_COMPUTED_NOTE in md
    widgets_pro = md.split("## widgets: PRO")[1].split("##")[0]
    assert "| default | n/a |" in widgets_pro and "| **Mean** | n/a |" in widgets_pro
    assert "| **Mean** | 0.600 |" in md.split("## mvtec: PRO")[1].split("##")[0]
    assert "| **Mean** | 0.600 |" in md.split("## widgets: image AUROC")[1].split("##")[0]
    by_row = {(r["dataset"], r["category"]): r for r in csv.DictReader(io.StringIO(to_csv(board)))}
    assert by_row[("widgets", "default")]["m/pixel_auroc"] == "n/a"
    assert by_row[("widgets", "Mean")]["m/pro"] == "n/a" and by_row[("mvtec", "Mean")]["m/pro"] == "0.600"
    # a board without null metrics reads as before: no n/a legend
    assert NOT_COMPUTED_NOTE not in to_markdown(build_leaderboard(results[:1], paper={}), source="runs/")


def test_a_mean_with_a_null_member_is_null_and_a_missing_metric_is_not():
    a = _record("m", "default", dataset="widgets", metrics=NO_MASKS)
    b = _record("m", "lot2", dataset="widgets", metrics={**NO_MASKS, "pixel_auroc": 0.7})
    mean = _rows(build_leaderboard([a, b], paper={}))[("widgets", "Mean")][("m", "pixel_auroc")]
    assert mean.mean is None and mean.not_computed
    # an older record without the key (not null) keeps the old rule: the mean over the categories with a value
    c = _record("m", "lot3", dataset="widgets", metrics={"image_auroc": 0.5, "pro": 0.4})
    mean = _rows(build_leaderboard([b, c], paper={}))[("widgets", "Mean")][("m", "pixel_auroc")]
    assert (mean.mean, mean.n, mean.of, mean.not_computed) == (0.7, 1, 2, False)


def test_category_kinds_per_dataset():
    from anobench.results.leaderboard import category_kind

    assert category_kind("mvtec", "carpet") == "texture" and category_kind("mvtec", "bottle") == "object"
    assert all(category_kind(d, c) == "object" for d, c in (("visa", "candle"), ("btad", "01"), ("mpdd", "tubes")))
    assert category_kind("widgets", "default") == "other"
    # an mvtec row of a category MVTec AD has not (an older record) is shown, never averaged into its Mean
    results = [_record("m", "bottle", metrics={"image_auroc": 0.9, "pixel_auroc": 0.8, "pro": 0.6}),
               _record("m", "widgets", metrics={"image_auroc": 0.1, "pixel_auroc": 0.1, "pro": 0.1})]
    rows = _rows(build_leaderboard(results, paper={}))
    assert rows[("mvtec", "widgets")]["kind"] == "other"
    assert rows[("mvtec", "Mean")][("m", "image_auroc")].mean == 0.9
    assert ("mvtec", "Object mean") not in rows  # it would repeat the Mean
