"""The benchmark scripts under scripts/ still run and print their figures (no timing is asserted)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def test_bench_methods_prints_a_row_of_figures(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/bench_methods.py", "--methods", "memae", "--device", "cpu", "--steps", "2",
         "--override", "method.input.image_size=64", "method.input.batch_size=2", "method.module.channels=[8,16]",
         "method.module.memory_size=20", "data.synthetic.n_train=4", "data.synthetic.n_test_good=2",
         "data.synthetic.n_test_per_defect=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("memae"))
    size, batch, train_ips, infer_ips, prepare_s = row.split()[1:6]
    assert (size, batch) == ("64", "2")
    assert float(train_ips) > 0 and float(infer_ips) > 0 and float(prepare_s) >= 0
    assert "MiB" in row


def test_suite_costs_sums_the_recorded_timings_per_method(tmp_path):
    from anobench.results.record import write_result

    def record(method, category, train_s, inference_s, gpu_mb, status="ok"):
        return {"method": method, "dataset": "mvtec", "category": category, "seed": 0, "status": status,
                "finished_at": "2026-01-01T00:00:00", "budget": {"label": "paper"},
                "device": {"accelerator": "gpu", "cpu": "x", "gpu": "NVIDIA H200"},
                "timings": {"train_s": train_s, "inference_s": inference_s}, "peak_gpu_mb": gpu_mb,
                "peak_rss_mb": 2048.0, "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.9}}

    write_result(tmp_path / "runs" / "a", record("memae", "bottle", 3600.0, 360.0, 1024.0))
    write_result(tmp_path / "runs" / "b", record("memae", "cable", 1800.0, 0.0, 3072.0))
    write_result(tmp_path / "runs" / "c", {**record("memae", "grid", 36.0, 0.0, None), "status": "failed"})
    proc = subprocess.run([sys.executable, "scripts/suite_costs.py", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fields = next(line for line in proc.stdout.splitlines() if line.startswith("memae")).split()
    assert fields[1:8] == ["2", "1", "1.510", "0.100", "1.100", "3.00", "2.00"]  # 5436 s, 360 s, 3960 s; GiB
    assert "paper / NVIDIA H200" in proc.stdout
    missing = subprocess.run([sys.executable, "scripts/suite_costs.py", str(tmp_path / "nope")], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nope/runs: no such folder" in missing.stderr


def test_learning_curves_plan_and_table_from_recorded_runs(tmp_path):
    """The plan: one run with step checkpoints (+ evals) for a prefix method, one run per budget otherwise;
    the table: mean and [min, max] over seeds, a step checkpoint's train time is its share of its run."""
    sys.path.insert(0, str(REPO / "scripts"))
    import learning_curves as lc
    from anobench.results.record import write_result

    (memae,) = lc.plan(["memae"], [0], "bottle", "/m", tmp_path)
    steps = lc.STEP_GRID["memae"][0]
    assert f"trainer.max_steps={max(steps)}" in memae.args
    assert f"checkpoint_steps=[{','.join(map(str, steps[:-1]))}]" in memae.args
    assert [j.args[0] for j in memae.then] == ["eval"] * (len(steps) - 1)
    assert len(lc.plan(["ognet"], [0, 1], "bottle", "/m", tmp_path)) == 2 * len(lc.STEP_GRID["ognet"][0])

    def record(seed, task, steps, image, run, **extra):
        return {"method": "memae", "dataset": "mvtec", "category": "bottle", "seed": seed, "status": "ok",
                "task": task, "budget": {"global_step": steps}, "device": {"cpu": "cpu-x"}, "git_sha": "abc",
                "config": {"torch_threads": 1}, "metrics": {"image_auroc": image, "pixel_auroc": 0.6, "pro": 0.3},
                "timings": {"inference_s": 5.0, **({"train_s": 100.0} if task == "train" else {})}, **extra}

    for seed, (early, late) in enumerate([(0.55, 0.7), (0.65, 0.8)]):
        runs = tmp_path / "runs" / "memae" / f"seed{seed}"
        write_result(runs / "train200", record(seed, "train", 200, late, "train200"))
        # seed 1's eval recorded its source portably (against the named results root), as anobench eval does
        source = (str(runs / "train200" / "checkpoints" / "step50.ckpt") if seed == 0 else
                  f"${{paths.results_dir}}/runs/memae/seed{seed}/train200/checkpoints/step50.ckpt")
        evaluated = record(seed, "eval", 50, early, "eval50", source_checkpoint=source)
        evaluated["config"]["paths"] = {"results_dir": str(tmp_path)}
        write_result(runs / "eval50", evaluated)
    write_result(tmp_path / "runs" / "memae" / "seed2" / "train200", {**record(2, "train", 200, 0.1, "x"),
                                                                      "status": "failed"})
    proc = subprocess.run([sys.executable, "scripts/learning_curves.py", "--collect-only", "--work", str(tmp_path),
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "bottle.csv")))
    assert [(r["seed"], r["steps"], r["train_s"]) for r in rows] == [("0", "50", "25.0"), ("1", "50", "25.0"),
                                                                     ("0", "200", "100.0"), ("1", "200", "100.0")]
    table = (tmp_path / "out" / "bottle.md").read_text()
    assert "| memae | 50 | 0,1 | 0.600 [0.550, 0.650] | 0.600 [0.600, 0.600] | 0.300 [0.300, 0.300] | 25 | 5 |" in table
    assert "| memae | 200 | 0,1 | 0.750 [0.700, 0.800] |" in table
    assert (tmp_path / "out" / "bottle.svg").read_text().lstrip().startswith("<?xml")

    # re-running some methods keeps the committed rows of the others (an older CSV may lack newer columns)
    old = tmp_path / "old"
    old.mkdir()
    (old / "bottle.csv").write_text("method,category,seed,steps,image_auroc,pixel_auroc,pro,train_s,inference_s\n"
                                    "gradcon,bottle,0,30,0.4,0.5,0.1,10.0,2.0\n"
                                    "memae,bottle,0,999,0.9,0.9,0.9,1.0,1.0\n")
    proc = subprocess.run([sys.executable, "scripts/learning_curves.py", "--collect-only", "--methods", "memae",
                           "--work", str(tmp_path), "--out", str(old)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(old / "bottle.csv")))
    assert [(r["method"], r["steps"]) for r in rows] == [("gradcon", "30"), *[("memae", s) for s in
                                                                              ("50", "50", "200", "200")]]
    assert rows[0]["git_sha"] == "" and rows[1]["git_sha"] == "abc"
    assert "| gradcon | 30 | 0 | 0.400 [0.400, 0.400] |" in (old / "bottle.md").read_text()


def test_us_scales_scores_each_receptive_field_and_their_mean(tmp_path):
    out = tmp_path / "scales.csv"
    proc = subprocess.run(
        [sys.executable, "scripts/us_scales.py", "--steps", "1", "2", "--out", str(out), "--", "data=synthetic/washer",
         "backbone=none", "method.module.patch_sizes=[17,33]", "method.module.n_students=1", "method.module.width=0.0625",
         "method.input.image_size=64", "data.synthetic.n_train=6", "data.synthetic.n_test_good=2",
         "data.synthetic.n_test_per_defect=1", f"paths.data_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out)))
    assert [(r["step"], r["map"]) for r in rows] == [(s, m) for s in ("1", "2") for m in ("p17", "p33", "mean")]
    assert all(0.0 <= float(r[k]) <= 1.0 for r in rows for k in ("image_auroc", "pixel_auroc", "pro"))


def test_us_scales_names_bad_steps_and_other_methods(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "scripts/us_scales.py", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=600)

    assert "--steps [0]: expected positive step counts" in run("--steps", "0").stderr
    assert "method=memae: this script measures uninformed_students only" in run("--steps", "1", "--",
                                                                                  "method=memae").stderr
    short = run("--steps", "2", "--", "data=synthetic/washer", "backbone=none", "method.module.patch_sizes=[17]",
                "method.module.n_students=1", "method.module.width=0.0625", "method.input.image_size=32",
                "data.synthetic.n_train=4", "data.synthetic.n_test_good=1", "data.synthetic.n_test_per_defect=1",
                f"paths.data_dir={tmp_path}", "trainer.max_steps=1")
    assert short.returncode != 0 and "--steps [2]: the fit stopped at step 1 before reaching them all" in short.stderr


def _nn_result(work: Path, search: str, image: float, seconds: float, status: str = "ok") -> None:
    (work / search).mkdir(parents=True)
    record = {"status": status, "timings": {"inference_s": seconds},
              "metrics": {"image_auroc": image, "pixel_auroc": 0.9, "pro": 0.7},
              "evaluation": {"nearest_neighbour": {"search": search, "nprobe": 8} if search == "ivf" else {"search": search}}}
    (work / search / "result.json").write_text(json.dumps(record))


def test_bench_nn_search_tables_each_search_against_exact(tmp_path):
    _nn_result(tmp_path, "exact", 0.95, 150.0)
    _nn_result(tmp_path, "ivf", 0.947, 36.0)
    proc = subprocess.run([sys.executable, "scripts/bench_nn_search.py", str(tmp_path / "run"), "--work", str(tmp_path),
                           "--searches", "exact", "ivf", "--collect-only"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "| ivf (nprobe 8) | 36.0 | 0.9470 |" in proc.stdout and "-0.0030 / +0.0000 / +0.0000" in proc.stdout


def test_bench_nn_search_names_missing_failed_and_wrong_runs(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "scripts/bench_nn_search.py", *args], cwd=REPO, capture_output=True,
                              text=True)

    _nn_result(tmp_path, "exact", 0.95, 150.0, status="failed")
    failed = run(str(tmp_path), "--work", str(tmp_path), "--searches", "exact", "--collect-only")
    assert failed.returncode != 0 and "status 'failed'" in failed.stderr
    missing = run(str(tmp_path), "--work", str(tmp_path), "--searches", "hnsw", "--collect-only")
    assert missing.returncode != 0 and str(tmp_path / "hnsw" / "result.json") in missing.stderr
    no_run = run(str(tmp_path / "nothing"))
    assert no_run.returncode != 0 and "must be a finished `anobench train` run" in no_run.stderr
    other = tmp_path / "memae_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.ckpt").write_bytes(b"")
    (other / "config.yaml").write_text("method:\n  name: memae\n")
    wrong = run(str(other))
    assert wrong.returncode != 0 and "method=memae, not patch_svdd" in wrong.stderr


def test_bench_patch_svdd_counts_the_encoder_flops_and_compares_the_same_work():
    """The FLOP count behind the printed GFLOP/s equals torch's own count, and the official-call-pattern
    step computes the same loss as our training step on the same seed (so the timing ratio compares
    the same work)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(REPO / "scripts"))
    import bench_patch_svdd as bench
    from anobench.methods.patch_svdd import PatchSVDD
    from anobench.methods.patch_svdd.torch_model import EncoderSmall

    with FlopCounterMode(display=False) as counter:
        EncoderSmall()(torch.rand(5, 3, 32, 32))
    assert bench.encoder_gflop(5) * 1e9 == counter.get_total_flops()

    torch.manual_seed(0)
    ours = PatchSVDD()
    ours.model.fit_mean([torch.rand(2, 3, 192, 192)])
    x = ours.model.normalize(torch.rand(3, 3, 192, 192))
    official = PatchSVDD(encoder_cpu_chunk=None)
    official.load_state_dict(ours.state_dict())
    torch.manual_seed(1)
    expected = ours.losses_from_normalised(x, torch.arange(3))["loss"]
    torch.manual_seed(1)
    got = bench.official_pattern_step(official, x, torch.optim.SGD(official.parameters(), lr=0.0))
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)


def _pooling_record(method: str, seed: int, pooled: dict, status: str = "ok") -> dict:
    return {"method": method, "dataset": "synthetic", "category": "washer", "seed": seed, "status": status,
            "finished_at": "2026-01-01T00:00:00", "budget": {"label": "reduced"},
            "metrics": {"image_auroc": 0.5, "pixel_auroc": 0.5, "pro": 0.2},
            "evaluation": {"image_auroc_by_pooling": pooled}}


def test_map_pooling_picks_the_best_mean_and_breaks_ties_by_the_worst_run(tmp_path, capsys):
    import importlib.util

    from anobench.results.record import write_result

    spec = importlib.util.spec_from_file_location("map_pooling", REPO / "scripts" / "map_pooling.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # top1_mean and top5_mean tie on the mean (0.70); top5_mean has the better worst run (0.65 vs 0.60)
    write_result(tmp_path / "runs" / "a", _pooling_record("synthcp", 0, {"max": 0.5, "smoothed_max": 0.55,
                                                                        "top1_mean": 0.8, "top5_mean": 0.75}))
    write_result(tmp_path / "runs" / "b", _pooling_record("synthcp", 1, {"max": 0.9, "smoothed_max": 0.55,
                                                                        "top1_mean": 0.6, "top5_mean": 0.65}))
    write_result(tmp_path / "runs" / "c", _pooling_record("synthcp", 2, {"max": 0.0}, status="failed"))
    rows_file = tmp_path / "nbs.jsonl"
    rows_file.write_text(json.dumps({"method": "nbs", "dataset": "mvtec", "category": "bottle", "seed": 0,
                                     "labelled_seed": 3, "image_auroc_by_pooling": {
                                         "max": 0.3, "smoothed_max": 0.6, "top1_mean": 0.7, "top5_mean": 0.7}}) + "\n")
    assert script.main([str(tmp_path), str(rows_file), "--out", str(tmp_path / "rows.csv")]) == 0
    out = capsys.readouterr().out
    assert "chosen by the rule" in out and out.strip().endswith("top5_mean")
    assert "| nbs | mvtec | bottle | 0/l3 |" in out
    rows = list(csv.DictReader((tmp_path / "rows.csv").open()))
    assert len(rows) == 3  # the failed run is left out
    means = {rule: sum(float(r[rule]) for r in rows) / 3 for rule in ("max", "top1_mean", "top5_mean")}
    assert means["top1_mean"] == means["top5_mean"] == max(means.values())
    # the same NBS run as a suite result (labelled set 3 in its config): counted once, as 0/l3
    write_result(tmp_path / "runs" / "d", {**_pooling_record("nbs", 0, {"max": 0.3, "smoothed_max": 0.6, "top1_mean": 0.7,
                                                                       "top5_mean": 0.7}),
                                           "dataset": "mvtec", "category": "bottle",
                                           "config": {"method": {"module": {"labelled_seed": 3}}}})
    assert script.main([str(tmp_path), str(rows_file), "--methods", "nbs"]) == 0  # nbs alone: top1_mean
    out = capsys.readouterr().out
    assert out.strip().endswith("top1_mean") and "| synthcp |" not in out and out.count("| nbs |") == 1
    assert script.main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_nbs_labelled_sets_writes_one_row_per_labelled_set(tmp_path):
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run(
        [sys.executable, "scripts/nbs_labelled_sets.py", "--labelled-seeds", "0", "1", "--out", str(out), "--",
         "data=synthetic/washer", f"paths.data_dir={tmp_path / 'data'}", "trainer.max_steps=2",
         "data.synthetic.n_train=6", "data.synthetic.n_test_good=4", "data.synthetic.n_test_per_defect=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["labelled_seed"] for r in rows] == [0, 1]
    assert all(r["method"] == "nbs" and r["category"] == "washer" and set(r["image_auroc_by_pooling"]) ==
               {"max", "smoothed_max", "top1_mean", "top5_mean"} for r in rows)
    assert rows[0]["n_evaluated"] < 12  # the labelled test images are left out of the evaluation
    assert "image_auroc: mean" in proc.stdout


def test_seed_spread_separates_only_gaps_wider_than_the_spread(tmp_path, capsys):
    import importlib.util
    import math

    from anobench.results.record import write_result

    spec = importlib.util.spec_from_file_location("seed_spread", REPO / "scripts" / "seed_spread.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # image AUROC over seeds: a 0.90/0.92/0.94 (std 0.02), b 0.80/0.84/0.88 (std 0.04), c 0.86/0.87/0.88 (std 0.01)
    values = {"a": [0.90, 0.92, 0.94], "b": [0.80, 0.84, 0.88], "c": [0.86, 0.87, 0.88], "single": [0.99]}
    for method, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            write_result(tmp_path / "runs" / method / f"seed{seed}", {
                **_pooling_record(method, seed, {}), "metrics": {"image_auroc": value, "pixel_auroc": 0.5, "pro": 0.2}})
    write_result(tmp_path / "runs" / "a" / "failed", {**_pooling_record("a", 3, {}, status="failed"),
                                                      "error": {"type": "X", "message": "boom"}})
    rows = script.spread_rows(tmp_path, ("image_auroc",))
    by_method = {r["method"]: r for r in rows}
    assert by_method["b"]["std"] == pytest.approx(0.04) and by_method["a"]["n"] == 3  # the failed run is no seed
    found = {(p["better"], p["worse"]): p for p in script.pairs(rows)}
    assert set(found) == {("a", "c"), ("a", "b"), ("c", "b")}  # one seed has no spread: left out of the pairs
    # a - c: gap 0.05 > 2 * sqrt(0.02^2 + 0.01^2) = 0.0447; a - b: 0.08 < 2 * sqrt(0.02^2 + 0.04^2) = 0.0894
    assert found[("a", "c")]["threshold"] == pytest.approx(2 * math.sqrt(0.02 ** 2 + 0.01 ** 2))
    assert found[("a", "c")]["separated"] and not found[("a", "b")]["separated"]
    assert not found[("c", "b")]["separated"]
    assert script.main([str(tmp_path), "--metrics", "image_auroc"]) == 0
    assert "synthetic/washer image_auroc: a > c by 0.050" in capsys.readouterr().out
    assert script.main([str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
