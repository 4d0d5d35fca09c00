"""scripts/gpu_check.py, the script to run when a GPU is lent, runs end to end on the CPU (its quickest form)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


def test_gpu_check_runs_every_kind_of_check_on_cpu_and_writes_lines_and_a_table(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--steps", "2", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [r["check"] for r in rows] == ["environment", "experiment:memae_paper", "patch_svdd_precision", "ddp:memae",
                                         "data_loading"]
    assert all(r["status"] == "ok" for r in rows), rows
    by = {r["check"]: r["result"] for r in rows}
    assert "float32" in by["environment"] and by["environment"]["versions"]["torch"]
    experiment = by["experiment:memae_paper"]
    assert experiment["steps"] == 2 and experiment["s_per_step"] > 0
    assert experiment["paper_steps_per_category"] > 0
    assert abs(experiment["paper_hours_15_categories"] - 15 * experiment["paper_hours_per_category"]) < 0.2
    precision = by["patch_svdd_precision"]
    assert 0 <= precision["tf32_off"]["changed_neighbours"] < 0.05  # float32 vs float64 of the same random encoder
    assert by["ddp:memae"]["world_size"] == 2 and by["ddp:memae"]["step_checkpoint"] is True
    assert set(by["data_loading"]) == {"workers_0_images_per_s", "workers_2_images_per_s"}
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("| check | status |") and table.count("\n") == 2 + len(rows)


def test_gpu_check_refuses_cuda_without_a_gpu_naming_the_cpu_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal is for machines without one")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no CUDA device is visible (use --device cpu" in done.stderr
