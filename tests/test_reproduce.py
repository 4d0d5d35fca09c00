"""Reproduction check: ours vs the stored paper numbers with tolerances, statuses, and the CLI's exit codes.

Result files are written by hand (no training): Patch SVDD's paper reports image/pixel AUROC per category
(carpet 0.929 / 0.926, bottle 0.986 / 0.981, capsule 0.767 / 0.958), Uninformed Students' PRO
(toothbrush 0.863, bottle 0.918); MemAE reports nothing on MVTec AD.
"""

from __future__ import annotations

import pytest

from anobench.results.leaderboard import load_paper_numbers
from anobench.results.record import write_result
from anobench.results.reproduce import (
    FAILED,
    MISSING,
    NO_REFERENCE,
    NOT_PAPER_BUDGET,
    OK,
    OUTSIDE,
    ReproductionInputError,
    check_reproduction,
    tolerance_for,
)

# A three-category "paper" so that unrun categories are few and the expected statuses are explicit.
PAPER = {
    "patch_svdd": {
        "tolerance": {"image_auroc": 0.04, "pixel_auroc": 0.03, "mean": {"image_auroc": 0.02, "pixel_auroc": 0.02}},
        "mvtec": {"carpet": {"image_auroc": 0.929, "pixel_auroc": 0.926},
                  "bottle": {"image_auroc": 0.986, "pixel_auroc": 0.981},
                  "capsule": {"image_auroc": 0.767, "pixel_auroc": 0.958}},
    },
    "memae": {"protocol": "no MVTec AD numbers in the paper", "mvtec": {}},
}


def _write(root, name, method, category, metrics=None, seed=0, label="paper", status="ok", dataset="mvtec",
           finished="2026-01-01T00:00:00"):
    record = {"method": method, "dataset": dataset, "category": category, "seed": seed, "status": status,
              "finished_at": finished, "budget": {"label": label}}
    if status == "ok":
        record["metrics"] = {"image_auroc": 0.5, "pixel_auroc": 0.5, "pro": 0.5, **(metrics or {})}
    else:
        record["error"] = {"type": "RuntimeError", "message": "boom"}
    write_result(root / "runs" / name, record)


def _full_patch_svdd(root, **overrides):
    """Paper-budget Patch SVDD results on all three PAPER categories, inside tolerance unless overridden."""
    values = {"carpet": {"image_auroc": 0.94, "pixel_auroc": 0.92},
              "bottle": {"image_auroc": 0.97, "pixel_auroc": 0.98},
              "capsule": {"image_auroc": 0.78, "pixel_auroc": 0.95}}
    for category, metrics in values.items():
        _write(root, f"psvdd-{category}", "patch_svdd", category, {**metrics, **overrides.get(category, {})})


def _by_key(report):
    return {(r.method, r.category, r.metric): r for r in report.rows}


def test_in_tolerance_passes_and_pro_without_paper_number_is_no_reference(tmp_path):
    _full_patch_svdd(tmp_path)
    report = check_reproduction(tmp_path, paper=PAPER)
    rows = _by_key(report)
    assert report.passed and report.failures == []
    assert rows[("patch_svdd", "carpet", "image_auroc")].status == OK
    assert rows[("patch_svdd", "carpet", "image_auroc")].delta == pytest.approx(0.94 - 0.929)
    assert rows[("patch_svdd", "bottle", "pro")].status == NO_REFERENCE  # the paper reports no PRO
    mean = rows[("patch_svdd", "Mean", "image_auroc")]
    assert mean.status == OK and mean.tolerance == 0.02
    assert mean.ours == pytest.approx((0.94 + 0.97 + 0.78) / 3)
    assert mean.paper == pytest.approx((0.929 + 0.986 + 0.767) / 3)


def test_outside_tolerance_fails_and_names_each_category(tmp_path):
    # bottle image AUROC 0.90 vs 0.986 (±0.04) and capsule pixel AUROC 0.90 vs 0.958 (±0.03) are outside;
    # carpet 0.95 vs 0.929 is inside; a difference of exactly the tolerance counts as inside.
    _full_patch_svdd(tmp_path, bottle={"image_auroc": 0.90}, capsule={"pixel_auroc": 0.90},
                     carpet={"image_auroc": 0.929 + 0.04})
    report = check_reproduction(tmp_path, paper=PAPER)
    assert not report.passed
    failing = {(r.category, r.metric) for r in report.failures}
    assert {("bottle", "image_auroc"), ("capsule", "pixel_auroc")} <= failing
    assert ("carpet", "image_auroc") not in failing
    assert _by_key(report)[("patch_svdd", "bottle", "image_auroc")].status == OUTSIDE


def test_method_without_paper_numbers_is_no_reference_neither_pass_nor_failure(tmp_path):
    for category in ("carpet", "bottle"):
        _write(tmp_path, f"memae-{category}", "memae", category)
    report = check_reproduction(tmp_path, paper=PAPER)
    memae = [r for r in report.rows if r.method == "memae"]
    assert len(memae) == 6 and {r.status for r in memae} == {NO_REFERENCE}
    assert "no MVTec AD numbers" in memae[0].note
    assert report.passed and report.count(OK) == 0  # nothing failed, but nothing was shown to reproduce


def test_reduced_budget_is_not_a_reproduction_even_when_the_numbers_match(tmp_path):
    _full_patch_svdd(tmp_path)
    _write(tmp_path, "psvdd-carpet", "patch_svdd", "carpet", {"image_auroc": 0.929, "pixel_auroc": 0.926},
           label="reduced", finished="2026-02-01")  # replaces the paper-budget carpet result (same seed, newer)
    report = check_reproduction(tmp_path, paper=PAPER)
    row = _by_key(report)[("patch_svdd", "carpet", "image_auroc")]
    assert row.status == NOT_PAPER_BUDGET and row.budgets == ("reduced",)
    assert not report.passed and row in report.failures
    assert _by_key(report)[("patch_svdd", "Mean", "image_auroc")].status == NOT_PAPER_BUDGET
    allowed = check_reproduction(tmp_path, paper=PAPER, allow_reduced=True)
    assert allowed.passed and allowed.count(NOT_PAPER_BUDGET) == 4 and allowed.count(OK) == 4


def test_mean_over_seeds_is_compared_and_one_reduced_seed_taints_the_cell(tmp_path):
    # Carpet image AUROC, paper 0.929 ± 0.04: seeds 0.87 and 0.99 are each outside alone, their mean 0.93 inside.
    _full_patch_svdd(tmp_path)
    _write(tmp_path, "psvdd-carpet", "patch_svdd", "carpet", {"image_auroc": 0.87, "pixel_auroc": 0.92}, seed=0)
    _write(tmp_path, "psvdd-carpet-s1", "patch_svdd", "carpet", {"image_auroc": 0.99, "pixel_auroc": 0.92}, seed=1)
    row = _by_key(check_reproduction(tmp_path, paper=PAPER))[("patch_svdd", "carpet", "image_auroc")]
    assert row.ours == pytest.approx(0.93) and row.n_seeds == 2 and row.status == OK
    _write(tmp_path, "psvdd-carpet-s2", "patch_svdd", "carpet", {"image_auroc": 0.93, "pixel_auroc": 0.92}, seed=2,
           label="smoke")
    row = _by_key(check_reproduction(tmp_path, paper=PAPER))[("patch_svdd", "carpet", "image_auroc")]
    assert row.status == NOT_PAPER_BUDGET and row.budgets == ("paper", "smoke")


def test_unrun_category_is_missing_and_failed_runs_fail(tmp_path):
    _write(tmp_path, "psvdd-carpet", "patch_svdd", "carpet", {"image_auroc": 0.93, "pixel_auroc": 0.93})
    _write(tmp_path, "psvdd-bottle", "patch_svdd", "bottle", status="failed")
    report = check_reproduction(tmp_path, paper=PAPER)
    rows = _by_key(report)
    assert rows[("patch_svdd", "capsule", "image_auroc")].status == MISSING
    assert rows[("patch_svdd", "bottle", "pixel_auroc")].status == FAILED
    assert {(r.category, r.status) for r in report.failures} == {("capsule", MISSING), ("bottle", FAILED)}


def test_stored_tolerances_cover_every_paper_number_and_widen_flagged_cells():
    paper = load_paper_numbers()
    for method, entry in paper.items():
        for dataset, categories in entry.items():
            if dataset in ("source", "confidence", "protocol", "tolerance"):
                continue
            for category, metrics in categories.items():
                for metric in metrics:
                    assert tolerance_for(paper, method, category, metric) is not None, (method, category, metric)
    for method in ("memae", "mnad", "ognet", "synthcp", "nbs", "gradcon"):
        assert paper[method]["mvtec"] == {} and paper[method]["source"]
    assert tolerance_for(paper, "uninformed_students", "zipper", "pro") > tolerance_for(paper, "uninformed_students",
                                                                                          "bottle", "pro")
    assert tolerance_for(paper, "patch_svdd", "Mean", "image_auroc") < tolerance_for(paper, "patch_svdd", "bottle",
                                                                                       "image_auroc")


def test_bad_input_raises_with_the_path(tmp_path):
    with pytest.raises(ReproductionInputError, match="no such folder"):
        check_reproduction(tmp_path / "nope")
    (tmp_path / "runs").mkdir()
    with pytest.raises(ReproductionInputError, match="no result.json"):
        check_reproduction(tmp_path)


def test_cli_exit_codes_table_and_failure_list(run_cli, tmp_path):
    results = tmp_path / "results"
    # Real paper numbers: bottle image AUROC 0.986 ± 0.04 (ours 0.80: outside), pixel 0.981 ± 0.03 (0.97: inside).
    _write(results, "bottle", "patch_svdd", "bottle", {"image_auroc": 0.80, "pixel_auroc": 0.97})
    _write(results, "memae", "memae", "bottle")
    proc = run_cli("reproduce", "--check", str(results), check=False, env={"COLUMNS": "200"})
    assert proc.returncode == 1, proc.stderr
    assert "ours vs paper" in proc.stdout and "no reference" in proc.stdout
    assert "patch_svdd mvtec/bottle image AUROC: ours 0.800, paper 0.986 (±0.040) — outside" in proc.stderr
    assert "patch_svdd mvtec: missing, no run of 14 categories the paper reports: carpet, grid," in proc.stderr
    assert "pixel AUROC: ours 0.970" not in proc.stderr  # inside tolerance: not listed
    assert "memae" not in proc.stderr  # no reference: listed in the table, not a failure

    # A suite name resolves to <results dir>/suites/<name> (anobench bench's layout).
    _write(results / "suites" / "mvtec_paper", "memae", "memae", "bottle")
    proc = run_cli("reproduce", "--check", "mvtec_paper", check=False)
    assert proc.returncode == 0 and "nothing was compared with a paper number" in proc.stdout
    assert "3 with no reference" in proc.stdout  # memae's three metrics on bottle, listed and not checked
    proc = run_cli("reproduce", "--check", "synthetic_quick", check=False)
    assert proc.returncode == 2 and "no results yet" in proc.stderr

    proc = run_cli("reproduce", "--check", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = run_cli("reproduce", "--check", str(tmp_path / "empty"), check=False)
    assert proc.returncode == 2 and "no result.json files" in proc.stderr
