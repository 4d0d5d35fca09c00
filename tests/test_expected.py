"""Expected ranges: the synthetic suite, run as CI runs it, lands in the ranges stored in the repo; the check
names every cell that moved, went missing, failed or is new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anobench.results import expected
from anobench.results.record import write_result
from anobench.tasks.reproduce import reproduce_command
from tests.conftest import REPO


def _record(method: str, category: str, image: float, status: str = "ok", seed: int = 0) -> dict:
    record = {"method": method, "dataset": "synthetic", "category": category, "seed": seed, "status": status,
              "finished_at": "2026-01-01T00:00:00", "budget": {"label": "smoke"},
              "device": {"torch_threads": 1}}
    if status == "ok":
        record["metrics"] = {"image_auroc": image, "pixel_auroc": 0.8, "pro": 0.4}
    return record


def _suite(tmp_path: Path, cells: dict[tuple[str, str], float | list[float]], failed: tuple = ()) -> Path:
    """A toy suite folder: each cell's image AUROC per seed (a float = seed 0 only)."""
    suite_dir = tmp_path / "results" / "suites" / "toy"
    for (method, category), values in cells.items():
        for seed, value in enumerate(values if isinstance(values, list) else [values]):
            write_result(suite_dir / "runs" / method / category / f"seed{seed}",
                         _record(method, category, value, seed=seed))
    for method, category in failed:
        write_result(suite_dir / "runs" / method / f"{category}-failed",
                     {**_record(method, category, 0, "failed"), "error": {"type": "X", "message": "boom"}})
    return suite_dir


def test_ranges_come_from_the_pooled_seed_spread_and_a_rerun_passes(tmp_path):
    # m1: image AUROC over seeds 0,1,2 on two categories; pooled std of (0.6,0.7,0.8) and (0.5,0.5,0.5) = sqrt(0.02/4)
    suite_dir = _suite(tmp_path, {("m1", "weave"): [0.6, 0.7, 0.8], ("m1", "tablet"): [0.5, 0.5, 0.5]})
    path = expected.write_expected("toy", suite_dir, margin=0.02, k_sigma=4.0, path=tmp_path / "toy.yaml")
    document = yaml.safe_load(path.read_text())
    sigma = (0.02 / 4) ** 0.5
    weave = document["cells"]["m1"]["synthetic/weave"]["image_auroc"]
    assert weave["values"] == {0: 0.6, 1: 0.7, 2: 0.8}
    assert weave["range"] == pytest.approx([0.7 - 4 * sigma - 0.02, 1.0], abs=1e-4)  # clipped to [0, 1]
    tablet = document["cells"]["m1"]["synthetic/tablet"]["image_auroc"]
    assert tablet["range"] == pytest.approx([0.5 - 4 * sigma - 0.02, 0.5 + 4 * sigma + 0.02], abs=1e-4)
    # the Mean over 2 categories: centre 0.6, half-width 4 sigma / sqrt(2) + margin
    mean = document["means"]["m1"]["synthetic"]["image_auroc"]
    assert mean["range"] == pytest.approx([0.6 - 4 * sigma / 2 ** 0.5 - 0.02, 0.6 + 4 * sigma / 2 ** 0.5 + 0.02],
                                          abs=1e-4)
    # a constant metric (pixel AUROC 0.8 everywhere) keeps the bare margin
    assert document["cells"]["m1"]["synthetic/weave"]["pixel_auroc"]["range"] == [0.78, 0.82]
    rows = expected.check_expected("toy", suite_dir, path=path)
    assert len(rows) == 3 + 6 and {r.status for r in rows} == {"ok"}


def test_one_seed_on_another_machine_within_the_spread_passes_and_a_broken_method_fails(tmp_path):
    spread = {("m1", c): [0.70 + d, 0.78 + d, 0.86 + d] for c, d in (("weave", 0.0), ("tablet", 0.05),
                                                                    ("granite", -0.05), ("washer", 0.02))}
    path = expected.write_expected("toy", _suite(tmp_path / "a", spread), path=tmp_path / "toy.yaml")
    # another CPU: seed 0 lands near, but not on, this machine's seed-0 values
    other_cpu = _suite(tmp_path / "b", {("m1", c): v[0] - 0.06 for (_, c), v in spread.items()})
    assert {r.status for r in expected.check_expected("toy", other_cpu, path=path)} == {"ok"}
    # a broken method scores at chance everywhere: its Mean falls out of range even where single cells would not
    broken = _suite(tmp_path / "c", {("m1", c): 0.5 for (_, c) in spread})
    rows = {(r.category, r.metric): r for r in expected.check_expected("toy", broken, path=path)}
    assert rows[("Mean", "image_auroc")].status == "outside"


def test_writing_ranges_refuses_a_single_seed(tmp_path):
    suite_dir = _suite(tmp_path, {("m1", "weave"): 0.7})
    with pytest.raises(Exception, match=r"fewer than 3 seeds.*seeds=\[0,1,2\]"):
        expected.write_expected("toy", suite_dir, path=tmp_path / "toy.yaml")
    assert not (tmp_path / "toy.yaml").exists()


def test_check_names_every_moved_missing_failed_and_new_cell(tmp_path):
    before = _suite(tmp_path / "a", {("m1", "weave"): [0.70] * 3, ("m1", "tablet"): [0.60] * 3,
                                     ("m2", "weave"): [0.9] * 3})
    path = expected.write_expected("toy", before, margin=0.05, path=tmp_path / "toy.yaml")
    after = _suite(tmp_path / "b", {("m1", "weave"): 0.76, ("m3", "weave"): 0.5}, failed=[("m2", "weave")])
    rows = {(r.method, r.category, r.metric): r for r in expected.check_expected("toy", after, path=path)}
    assert rows[("m1", "weave", "image_auroc")].status == "outside"  # 0.76 > 0.75
    assert rows[("m1", "weave", "pixel_auroc")].status == "ok"
    assert rows[("m1", "tablet", "image_auroc")].status == "missing"
    assert rows[("m2", "weave", "image_auroc")].status == "failed"
    assert rows[("m2", "Mean", "image_auroc")].status == "failed"
    assert rows[("m3", "weave", "image_auroc")].status == "unexpected"


def test_writing_ranges_refuses_failed_cells(tmp_path):
    suite_dir = _suite(tmp_path, {("m1", "weave"): [0.7] * 3}, failed=[("m2", "weave")])
    with pytest.raises(Exception, match="no value"):
        expected.write_expected("toy", suite_dir, path=tmp_path / "toy.yaml")
    assert not (tmp_path / "toy.yaml").exists()


def test_a_suite_without_stored_ranges_is_one_clear_error(tmp_path, capsys):
    suite_dir = _suite(tmp_path, {("m1", "weave"): 0.7})
    with pytest.raises(expected.ExpectedRangesError, match="no expected ranges for suite toy"):
        reproduce_command(["--check", str(suite_dir), "--expected"])


def test_every_shipped_ranges_file_belongs_to_a_suite():
    from anobench.config import suite_options

    files = sorted(expected.EXPECTED_DIR.glob("*.yaml"))
    assert [p.stem for p in files] == ["synthetic_quick"]
    for path in files:
        assert path.stem in suite_options()
        document = expected.load_expected_document(path.stem)
        assert document["suite"] == path.stem and document["generated"]["torch_threads"] == [1]
        assert len(document["generated"]["seeds"]) >= 3  # ranges measure the seed spread, not one CPU
        methods = {label.split(" [")[0] for label in document["cells"]}  # nbs carries its semi-supervised label
        from anobench.tasks.plan import expand, load_suite

        assert methods == {job.method for job in expand(load_suite(path.stem))}


@pytest.mark.slow
def test_synthetic_suite_lands_in_its_stored_expected_ranges(tmp_path):
    """What CI guards: every method's numbers on every synthetic category, through the real `anobench bench`
    (two local processes), must stay in the ranges committed in anobench/results/expected/synthetic_quick.yaml."""
    env = {**os.environ, "ANOBENCH_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "anobench", "bench", "suite=synthetic_quick", "n_jobs=2",
                          f"results_dir={results}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    check = subprocess.run([sys.executable, "-m", "anobench", "reproduce", "--check", "synthetic_quick",
                            "--expected", "--results-dir", str(results)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-4000:]
    # 96 cells (8 methods x 4 categories x 3 metrics) + 8 methods x 3 Means
    assert "120 of 120 cell(s) within their expected range" in check.stdout, check.stdout[-3000:]


def test_a_failed_check_says_when_the_thread_count_differs_from_the_stored_ranges(tmp_path, monkeypatch, capsys):
    before = _suite(tmp_path / "a", {("m1", "weave"): [0.70] * 3})
    monkeypatch.setattr(expected, "EXPECTED_DIR", tmp_path / "expected")
    expected.write_expected("toy", before, margin=0.05)
    after = _suite(tmp_path / "b", {("m1", "weave"): 0.90})
    for path in after.glob("runs/**/result.json"):  # the same runs, made with 2 torch threads
        record = json.loads(path.read_text())
        record["device"]["torch_threads"] = 2
        path.write_text(json.dumps(record))
    assert reproduce_command(["--check", str(after), "--expected"]) == 1
    err = capsys.readouterr().err
    assert "m1 synthetic/weave image AUROC: ours 0.900, expected [0.650, 0.750] — outside" in err
    assert "these runs used [2] torch thread(s), the expected ranges [1]" in err
