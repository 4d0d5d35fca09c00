"""`anobench bench suite=...`: shipped suites expand to composable jobs; resume after SIGKILL; failed jobs
are recorded and retried; concurrent writers into one results folder lose no row."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anobench.config import group_options
from anobench.errors import AnobenchError
from anobench.results.identity import config_hash
from anobench.tasks import bench
from anobench.tasks import plan as planning
from tests.conftest import REPO
from tests.methods.fitting import tiny_suite_overrides

# The tiniest end-to-end job (TINY in tests/methods/fitting.py: 2 steps, a handful of images), no checkpoint.
TINY_OVERRIDES = tiny_suite_overrides("save_checkpoint=false")
TINY_SUITE = ["suite=method", "method=patch_svdd", "experiment=null", "seeds=[0,1]",
              "categories=[synthetic/weave,synthetic/tablet]", TINY_OVERRIDES]


def _results(suite_dir: Path) -> dict[Path, dict]:
    """The finished runs' records (a run records status `running` from its start until it ends)."""
    records = {p: json.loads(p.read_text()) for p in sorted((suite_dir / "runs").glob("**/result.json"))}
    return {p: r for p, r in records.items() if r["status"] != "running"}


def _unfinished(suite_dir: Path) -> list[Path]:
    return [d for d in (suite_dir / "runs").glob("*/*/*/seed*/*")
            if not (d / "result.json").exists() or json.loads((d / "result.json").read_text())["status"] == "running"]


def _bench_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ANOBENCH_RESULTS_DIR": str(tmp_path / "results"), "ANOBENCH_DATA_DIR": str(tmp_path / "data"),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


SHIPPED_SUITES = [
    ("mvtec_paper", [], 8 * 15),
    ("synthetic_quick", [], 8 * 4),
    ("cpu_reduced", [], 8),
    ("method", ["method=memae"], 15 * 3),
]


def test_every_shipped_suite_is_checked_below():
    assert set(group_options("suite")) == {name for name, _, _ in SHIPPED_SUITES}


@pytest.mark.parametrize("name,settings,n_jobs", SHIPPED_SUITES)
def test_every_shipped_suite_expands_to_jobs_that_compose(name, settings, n_jobs, tmp_path):
    assert name in group_options("suite")
    suite = planning.load_suite(name, settings)
    jobs = planning.expand(suite)
    assert len(jobs) == n_jobs and len(set(jobs)) == n_jobs
    if name == "mvtec_paper":
        assert {j.experiment for j in jobs} == {f"{j.method}_paper" for j in jobs}
    # Compose every (method, experiment) once, with the first and last category: the grid's other cells
    # only differ by data=, which tests/test_config.py composes for every option.
    seen = set()
    for job in jobs:
        if (job.method, job.experiment, job.seed) in seen and job.data not in (suite.categories[0], suite.categories[-1]):
            continue
        seen.add((job.method, job.experiment, job.seed))
        cfg = planning.compose_job(job, tmp_path / "suite")
        resolved = OmegaConf.to_container(cfg, resolve=True)
        assert resolved["method"]["name"] == job.method and resolved["seed"] == job.seed
        assert f"{resolved['data']['dataset']}/{resolved['data']['category']}" == job.data
        assert resolved["experiment_name"] == job.experiment
        assert resolved["paths"]["results_dir"] == str(tmp_path / "suite")


def test_method_suite_is_named_after_its_method_and_requires_it():
    assert planning.load_suite("method", ["method=nbs"]).name == "method_nbs"
    with pytest.raises(AnobenchError, match="method"):
        planning.load_suite("method")
    with pytest.raises(AnobenchError, match="suites: .*synthetic_quick"):
        planning.load_suite("no_such_suite")
    with pytest.raises(AnobenchError, match="categories="):  # a plain data= would collapse the grid
        bench.bench_command(["suite=synthetic_quick", "data=synthetic/weave"])


def test_config_hash_ignores_paths_but_not_settings():
    base = {"seed": 0, "method": {"name": "m", "lr": 1e-3}, "data": {"root": "/a", "category": "x"},
            "paths": {"results_dir": "/r1"}}
    moved = {**base, "data": {"root": "/b", "category": "x"}, "paths": {"results_dir": "/r2"}}
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash({**base, "seed": 1})
    assert config_hash(base) != config_hash({**base, "method": {"name": "m", "lr": 1e-4}})


def test_resume_after_sigkill_keeps_finished_results_and_redoes_the_killed_run(tmp_path, monkeypatch):
    """Kill the suite (SIGKILL) once its first result exists and the next run has started, then re-run it
    (in parallel, n_jobs=2): finished results untouched, the killed run redone, nothing duplicated."""
    env = _bench_env(tmp_path)
    suite_dir = tmp_path / "results" / "suites" / "method_patch_svdd"
    command = [sys.executable, "-m", "anobench", "bench", *TINY_SUITE]
    log = (tmp_path / "killed.log").open("w")  # a file, not a pipe: a full pipe would block the child
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (_results(suite_dir) and _unfinished(suite_dir)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL, f"the suite ended before the kill: {(tmp_path / 'killed.log').read_text()[-3000:]}"
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in _results(suite_dir)}
    assert finished and all(json.loads(b)["status"] == "ok" for _, b in finished.values())
    half_done = _unfinished(suite_dir)
    assert half_done

    rerun = subprocess.run([*command, "n_jobs=2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(finished)} job(s) already complete" in rerun.stdout
    results = _results(suite_dir)
    for path, (mtime, content) in finished.items():  # untouched: not redone, not rewritten
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == content
    cells = sorted((r["category"], r["seed"]) for r in results.values())
    assert cells == [("tablet", 0), ("tablet", 1), ("weave", 0), ("weave", 1)]  # each once, none lost
    assert all(r["status"] == "ok" and r["config_hash"] == p.parent.name for p, r in results.items())
    for directory in half_done:  # the killed run's folder left runs/ and was redone cleanly
        assert not directory.exists() or (directory / "result.json").exists()
        assert list((suite_dir / "stale").glob(f"*/{directory.relative_to(suite_dir / 'runs')}"))

    # A third run would do nothing: every job is complete (checked without the cost of another process).
    suite = planning.load_suite("method", TINY_SUITE[1:])
    monkeypatch.setenv("ANOBENCH_DATA_DIR", env["ANOBENCH_DATA_DIR"])
    assert all(item.done for item in planning.plan(planning.expand(suite), suite_dir, clean=False))
    rows = {r["category"]: r for r in csv.DictReader((suite_dir / "leaderboard.csv").open())}
    assert rows["weave"]["patch_svdd/image_auroc/n_seeds"] == "2" and rows["weave"]["patch_svdd/image_auroc/std"]
    assert "seeds)" in (suite_dir / "leaderboard.md").read_text()  # mean ± std (2 seeds)


def test_failed_job_is_recorded_does_not_stop_the_suite_and_is_retried(tmp_path, monkeypatch):
    from anobench.tasks import run as run_pipeline

    monkeypatch.setenv("ANOBENCH_DATA_DIR", str(tmp_path / "data"))
    real_build_run = run_pipeline.build

    def failing_on_weave(cfg):
        if cfg.data.category == "weave":
            raise RuntimeError("injected failure")
        return real_build_run(cfg)

    suite = planning.load_suite("method", TINY_SUITE[1:3] + ["seeds=[0]", TINY_SUITE[4], TINY_OVERRIDES])
    monkeypatch.setattr(run_pipeline, "build", failing_on_weave)
    outcome = bench.run_suite(suite, tmp_path / "results")
    assert [(p.category, r["status"]) for p, r in outcome.ran] == [("weave", "failed"), ("tablet", "ok")]
    assert "injected failure" in outcome.failed[0][1]["error"]["message"]
    rows = {r["category"]: r for r in csv.DictReader((outcome.suite_dir / "leaderboard.csv").open())}
    assert rows["weave"]["patch_svdd/pro"] == "failed" and rows["tablet"]["patch_svdd/pro"] not in ("", "failed")

    monkeypatch.setattr(run_pipeline, "build", real_build_run)
    retry = bench.run_suite(suite, tmp_path / "results")
    assert [p.category for p in retry.skipped] == ["tablet"]
    assert [(p.category, r["status"]) for p, r in retry.ran] == [("weave", "ok")]
    assert len(_results(outcome.suite_dir)) == 2  # the failed attempt moved to stale/, out of the leaderboard
    assert len(list((outcome.suite_dir / "stale").glob("**/result.json"))) == 1


def _write_rows(folder: str, writer: int, n_rows: int) -> None:
    """One concurrent writer: results plus a leaderboard rebuild after each, like parallel suite jobs."""
    from anobench.tasks.publish import publish
    from anobench.results.record import write_result

    for row in range(n_rows):
        record = {"method": f"m{writer}", "dataset": "synthetic", "category": f"c{row}", "seed": 0, "status": "ok",
                  "finished_at": "2026-01-01T00:00:00", "budget": {"label": "smoke"},
                  "metrics": {"image_auroc": 0.5 + writer / 100 + row / 1000, "pixel_auroc": 0.5, "pro": 0.5}}
        write_result(Path(folder) / "runs" / f"w{writer}" / f"r{row}", record)
        publish(folder)


def test_concurrent_writers_lose_no_row_and_keep_files_parseable(tmp_path):
    n_writers, n_rows = 4, 5
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_rows, args=(str(tmp_path), w, n_rows)) for w in range(n_writers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    assert len(_results(tmp_path)) == n_writers * n_rows
    assert not list(tmp_path.glob("**/*.tmp"))  # no half-written temporary left behind
    # Rebuilds are serialised by the lock and each worker wrote its results before its own rebuilds, so the
    # table the last rebuild left on disk holds every row of every writer.
    rows = {r["category"]: r for r in csv.DictReader((tmp_path / "leaderboard.csv").open())}
    assert f"{n_writers * n_rows} result file(s)" in (tmp_path / "leaderboard.md").read_text()
    for writer in range(n_writers):
        for row in range(n_rows):
            assert float(rows[f"c{row}"][f"m{writer}/image_auroc"]) == pytest.approx(0.5 + writer / 100 + row / 1000, abs=1e-3)


def test_a_suite_already_running_or_with_live_workers_is_refused_with_one_clear_error(tmp_path, monkeypatch):
    from anobench.io import folder_lock
    from anobench.tasks.plan import WORKERS_LOCK

    monkeypatch.setenv("ANOBENCH_DATA_DIR", str(tmp_path / "data"))
    suite = planning.load_suite("method", TINY_SUITE[1:3] + ["seeds=[0]", "categories=[synthetic/weave]", TINY_OVERRIDES])
    suite_dir = tmp_path / "results" / "suites" / "method_patch_svdd"
    # flock conflicts between open file descriptions, so a second open in this process stands in for another process
    with folder_lock(suite_dir, ".suite.lock"):
        with pytest.raises(AnobenchError, match="already running in another process"):
            bench.run_suite(suite, tmp_path / "results")
    with folder_lock(suite_dir, WORKERS_LOCK, exclusive=False):  # a worker of a killed run, still training
        with pytest.raises(AnobenchError, match="workers of an earlier, killed .* still finishing"):
            bench.run_suite(suite, tmp_path / "results")
    assert not list(suite_dir.glob("runs/**/result.json"))
