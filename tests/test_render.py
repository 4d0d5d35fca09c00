"""Leaderboard rendering and publishing: one number formatter for every output, per-method text from
paper_numbers.yaml only, and one publisher writing each file once."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from anobench.config import config_dir
from anobench.results import expected, leaderboard, render, reproduce
from anobench.results.leaderboard import MeanCell, build_leaderboard, load_paper_numbers
from anobench.results.record import METRIC_KEYS, write_result
from anobench.results.render import format_value, to_csv, to_markdown
from anobench.tasks import reproduce as reproduce_verb
from anobench.visualize import report


def _record(method, category, seed=0, metrics=None, status="ok", dataset="mvtec", label="smoke", path=None):
    record = {"method": method, "dataset": dataset, "category": category, "seed": seed, "status": status,
              "finished_at": "2026-01-01T00:00:00", "budget": {"label": label},
              "_path": path or f"runs/{method}/{category}/{seed}/result.json"}
    if status == "ok":
        record["metrics"] = metrics
    else:
        record["error"] = {"type": "X", "message": "boom"}
    return record


def _board(paper=None):
    results = [
        _record("m", "carpet", 0, {"image_auroc": 0.81234, "pixel_auroc": 0.9, "pro": 0.7}),
        _record("m", "carpet", 1, {"image_auroc": 0.61234, "pixel_auroc": 0.8, "pro": 0.6}),
        _record("m", "bottle", 0, {"image_auroc": 0.95, "pixel_auroc": 0.7, "pro": 0.5}),
        _record("m", "cable", 0, status="failed"),
    ]
    return build_leaderboard(results, paper={} if paper is None else paper)


def test_format_value_keeps_each_outputs_format():
    assert format_value(0.12345) == "0.123"
    assert format_value(None) == "" and format_value(float("nan")) == ""
    assert format_value(None, missing="—") == "—"
    assert format_value(0.01, signed=True) == "+0.010" and format_value(-0.01, signed=True) == "-0.010"
    assert format_value(0.123456, 4) == "0.1235"


def test_mean_rows_are_typed_cells_and_markdown_and_csv_show_the_same_numbers():
    board = _board()
    mean_row = next(r for r in board.rows if r["category"] == "Mean")
    cell = mean_row[("m", "image_auroc")]
    assert isinstance(cell, MeanCell) and (cell.n, cell.of) == (2, 3)  # cable failed: no value
    assert cell.mean == pytest.approx(((0.81234 + 0.61234) / 2 + 0.95) / 2)
    markdown = to_markdown(board, source="runs/")
    table = {r["category"]: r for r in csv.DictReader(io.StringIO(to_csv(board)))}
    for row in board.rows:
        for metric in METRIC_KEYS:
            cell = row[("m", metric)]
            if cell.mean is None:
                continue
            number = format_value(cell.mean)
            assert table[row["category"]][f"m/{metric}"] == number
            name = f"**{row['category']}**" if row["kind"] == "mean" else row["category"]
            assert re.search(rf"^\| {re.escape(name)} \| {re.escape(number)}[ †(]", markdown, re.M), (name, number)
    assert "| **Mean** | 0.831 (2/3)† |" in markdown and table["Mean"]["m/image_auroc/n_seeds"] == "2"


def test_markdown_and_csv_numbers_come_from_the_one_formatter(monkeypatch):
    """Swap the formatter: every number of both outputs follows it (no second formatter anywhere)."""
    board = _board()
    monkeypatch.setattr(render, "format_value", lambda value, digits=3, **kw: format_value(value, 5, **kw))
    markdown, table = to_markdown(board, source="runs/"), to_csv(board)
    assert "| carpet | 0.71234 ± 0.14142 (2 seeds)† |" in markdown and "| **Mean** | 0.83117 (2/3)† |" in markdown
    assert "mvtec,Mean,mean,0.83117,,2,smoke," in table and "mvtec,carpet,texture,0.71234,0.14142,2,smoke," in table
    for text in (markdown, table):
        assert not re.search(r"(?<![\d.])\d\.\d{3}(?!\d)", text)  # no 3-decimal number left anywhere


def test_reproduce_expected_and_the_report_use_the_same_formatter():
    for module in (expected, reproduce, reproduce_verb, report):
        assert module.format_value is format_value, module.__name__


def test_no_float_format_outside_the_formatter():
    root = Path(render.__file__).parent
    sources = [*root.glob("*.py"), root.parent / "tasks" / "reproduce.py", root.parent / "tasks" / "publish.py"]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        if path.name == "render.py":
            text = text.replace("{'+' if signed else ''}.{digits}f", "")  # the formatter itself
        assert not re.search(r"\{[^{}]*:\+?\.\d+[fge]\}", text), path.name


def test_protocol_notes_come_from_paper_numbers_for_the_methods_on_the_board():
    paper = load_paper_numbers()
    results = [_record(method, "bottle", metrics={"image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.9})
               for method in ("patch_svdd", "uninformed_students", "memae")]
    board = build_leaderboard(results, paper=paper)
    markdown = to_markdown(board, source="runs/")
    for method in ("patch_svdd", "uninformed_students", "memae"):
        assert f"- {method}: {paper[method]['protocol']}" in markdown
    assert "- mnad:" not in markdown  # not on the board
    assert "256x256" in markdown  # Patch SVDD's paper measures pixel AUROC at 256x256
    assert paper["patch_svdd"]["protocol"] in render.to_html(board)
    # any method, any note: nothing is specific to the methods shipped today
    toy = build_leaderboard([_record("toy", "bottle", metrics={"image_auroc": 0.5, "pixel_auroc": 0.5, "pro": 0.5})],
                            paper={"toy": {"protocol": "image AUROC on half the test set", "mvtec": {}}})
    assert "- toy: image AUROC on half the test set" in to_markdown(toy, source="runs/")
    bare = build_leaderboard([_record("toy", "bottle", metrics={"image_auroc": 0.5, "pixel_auroc": 0.5, "pro": 0.5})],
                             paper={})
    assert "protocol" not in to_markdown(bare, source="runs/")


def test_no_method_name_is_hard_coded_in_the_leaderboard_code():
    names = sorted(p.stem for p in (config_dir() / "method").glob("*.yaml"))
    assert "patch_svdd" in names and len(names) >= 8
    for module in (leaderboard, render):
        text = Path(module.__file__).read_text(encoding="utf-8").lower()
        for name in names:
            for spelling in {name, name.replace("_", " "), name.replace("_", "-"), name.replace("_", "")}:
                assert not re.search(rf"\b{re.escape(spelling)}\b", text), (module.__name__, spelling)


def _write_runs(folder: Path) -> None:
    write_result(folder / "runs" / "a", {k: v for k, v in _record(
        "patch_svdd", "bottle", metrics={"image_auroc": 0.9, "pixel_auroc": 0.8, "pro": 0.7}).items() if k != "_path"})


def test_publish_writes_the_tables_and_the_report_once_each(tmp_path, monkeypatch):
    from anobench.tasks import publish as publisher
    from anobench.visualize import plots

    writes: list[str] = []

    def counting(module):
        original = module.atomic_write_text

        def write(path, text, *args, **kwargs):
            writes.append(Path(path).relative_to(tmp_path).as_posix())
            return original(path, text, *args, **kwargs)

        monkeypatch.setattr(module, "atomic_write_text", write)

    for module in (publisher, report, plots):
        counting(module)
    _write_runs(tmp_path)
    board = publisher.publish(tmp_path)
    assert len(board.runs) == 1
    for name in ("leaderboard.md", "leaderboard.csv", "report.html"):
        assert writes.count(name) == 1, writes
    assert "plots/mvtec_image_auroc.svg" in writes and len(writes) == len(set(writes))
    assert "- patch_svdd: " in (tmp_path / "leaderboard.md").read_text()


def test_a_report_failure_is_a_warning_and_the_tables_are_written(tmp_path, monkeypatch, capsys):
    from anobench.tasks import publish as publisher

    def broken(*args, **kwargs):
        raise RuntimeError("no page today")

    monkeypatch.setattr(publisher, "write_report", broken)
    _write_runs(tmp_path)
    publisher.publish(tmp_path)
    assert "warning: could not write" in capsys.readouterr().out
    assert (tmp_path / "leaderboard.md").is_file() and (tmp_path / "leaderboard.csv").is_file()
    assert not (tmp_path / "report.html").exists()
