"""Learning curves on a real MVTec AD category: image AUROC, pixel AUROC and PRO against training steps.

    python scripts/learning_curves.py --mvtec-root /data/mvtec_ad [--category bottle] [--seeds 0 1]
                                      [--methods memae ognet ...] [--work /tmp/anobench-curves] [--n-jobs 2]
    python scripts/learning_curves.py --collect-only --work /tmp/anobench-curves   # table + figure only

Every run is a normal `anobench train` (trainer=cpu, torch_threads=1, as suite=cpu_reduced) with
`trainer.max_steps` set to a budget of `STEP_GRID` and `trainer.max_epochs=-1` (so the step count, not an
epoch cap, ends it). Where nothing in a method depends on `max_steps` itself ("prefix" below), one run per
seed trains to the largest budget and saves `checkpoint_steps` at the smaller ones, which `anobench eval`
then tests: the weights at step N are those of a `max_steps=N` run with the same seed
(tests/test_step_checkpoints.py checks this). OGNet (its two phases split the budget) and NBS (its predictor is refitted after the last
step) run once per budget. `max_epochs=-1` also turns off MNAD's cosine schedule (its T_max is the epoch
budget; a default run anneals over 60 epochs, ≥ 98 % of the start lr after 200 steps on bottle). Patch SVDD
is tested with `nn_search=ivf` here (the default is exact; the Patch SVDD README measures the difference),
to keep the curves affordable on a 2-core CPU.

Writes `<out>/<category>.csv` (one row per run), `<out>/<category>.md` (mean and range over seeds) and
`<out>/<category>.svg`. Runs that already have a result.json under --work are not run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from anobench.io import atomic_write, atomic_write_csv, atomic_write_text
from anobench.results.portable import resolve_recorded_path

# method -> (training-step budgets, "prefix" = one run with step checkpoints | "separate" = one run per budget)
STEP_GRID: dict[str, tuple[list[int], str]] = {
    "gradcon": ([30, 60, 120], "prefix"),
    "memae": ([75, 150, 300], "prefix"),
    "mnad": ([50, 100, 200], "prefix"),
    "nbs": ([150, 300, 600, 1200], "separate"),
    "ognet": ([200, 400, 800, 1600], "separate"),
    "patch_svdd": ([30, 60, 120], "prefix"),
    "synthcp": ([100, 200, 400, 800], "prefix"),
    "uninformed_students": ([600, 1200, 2400, 3600], "prefix"),
}
EXTRA_OVERRIDES = {"patch_svdd": ["method.module.nn_search=ivf"]}
METRICS = ("image_auroc", "pixel_auroc", "pro")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Job:
    """One `anobench` call; `then` are the jobs that need its output (evals of its step checkpoints)."""

    name: str
    args: list[str]
    run_dir: Path
    then: list["Job"] = field(default_factory=list)


def plan(methods: list[str], seeds: list[int], category: str, mvtec_root: str, work: Path) -> list[Job]:
    """Every job of the curves, seed by seed (so a stopped sweep leaves whole curves of the first seeds)."""
    jobs = []
    for seed in seeds:
        for method in methods:
            steps, mode = STEP_GRID[method]
            common = [f"method={method}", f"data=mvtec/{category}", f"paths.mvtec_root={mvtec_root}", "trainer=cpu",
                      "torch_threads=1", "trainer.max_epochs=-1", f"seed={seed}", "visualize.enabled=false",
                      f"paths.data_dir={work / 'data'}", *EXTRA_OVERRIDES.get(method, [])]
            runs = work / "runs" / method / f"seed{seed}"
            if mode == "separate":
                for n in steps:
                    jobs.append(Job(f"{method} seed{seed} {n} steps",
                                    ["train", *common, f"trainer.max_steps={n}", "save_checkpoint=false",
                                     f"paths.results_dir={runs / 'results'}", f"hydra.run.dir={runs / f'train{n}'}"],
                                    runs / f"train{n}"))
                continue
            top = max(steps)
            train = Job(f"{method} seed{seed} {top} steps",
                        ["train", *common, f"trainer.max_steps={top}", "save_checkpoint=false",
                         f"checkpoint_steps=[{','.join(str(n) for n in steps if n != top)}]",
                         f"paths.results_dir={runs / 'results'}", f"hydra.run.dir={runs / f'train{top}'}"],
                        runs / f"train{top}")
            for n in steps:
                if n != top:
                    train.then.append(Job(f"{method} seed{seed} {n} steps (step checkpoint)",
                                          ["eval", f"checkpoint={runs / f'train{top}' / 'checkpoints' / f'step{n}.ckpt'}",
                                           "visualize.enabled=false", f"paths.results_dir={runs / 'results'}",
                                           f"hydra.run.dir={runs / f'eval{n}'}"], runs / f"eval{n}"))
            jobs.append(train)
    return jobs


def run_job(job: Job) -> tuple[Job, bool]:
    result = job.run_dir / "result.json"
    if result.is_file() and json.loads(result.read_text()).get("status") == "ok":
        return job, True
    start = time.perf_counter()
    log = job.run_dir.parent / f"{job.run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        proc = subprocess.run([sys.executable, "-m", "anobench", *job.args], cwd=REPO, stdout=handle,
                              stderr=subprocess.STDOUT, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    print(f"[{time.strftime('%H:%M:%S')}] {'ok' if proc.returncode == 0 else 'FAILED'} {job.name} "
          f"({time.perf_counter() - start:.0f} s; log {log})", flush=True)
    return job, proc.returncode == 0


def run_all(jobs: list[Job], n_jobs: int) -> None:
    """Run `jobs` on `n_jobs` workers; a job's follow-ups go to the front of the queue when it succeeds."""
    queue = list(jobs)
    running: set[Future] = set()
    with ThreadPoolExecutor(n_jobs) as pool:
        while queue or running:
            while queue and len(running) < n_jobs:
                running.add(pool.submit(run_job, queue.pop(0)))
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job, ok = future.result()
                if ok:
                    queue[:0] = job.then


def collect(work: Path) -> list[dict]:
    """One row per finished run under `work` (train and step-checkpoint eval alike)."""
    rows = []
    for path in sorted((work / "runs").glob("*/seed*/*/result.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "ok":
            continue
        budget = record.get("budget") or {}
        timings = record.get("timings") or {}
        method = record["method"]
        source = "eval of step checkpoint" if record["task"] == "eval" else "train"
        steps = int(budget["global_step"])
        # a step checkpoint's training time: its share of the run that wrote it (steps cost alike)
        train_s = timings.get("train_s")
        if train_s is None:
            trained = resolve_recorded_path(record["source_checkpoint"], record).parent.parent / "result.json"
            parent = json.loads(trained.read_text())
            train_s = parent["timings"]["train_s"] * steps / parent["budget"]["global_step"]
        rows.append({
            "method": method, "category": record["category"], "seed": record["seed"], "steps": steps,
            **{m: round(record["metrics"][m], 4) for m in METRICS},
            "image_auroc_map_max": round(record["metrics"].get("image_auroc_map_max", float("nan")), 4),
            # GradCon: each part of its score alone (its README, "Score parts")
            "score_part_aurocs": ";".join(f"{name}={part['image_auroc']:.3f}" for name, part in
                                          ((record.get("evaluation") or {}).get("score_parts") or {}).items()
                                          if isinstance(part, dict)),
            "train_s": round(train_s, 1), "inference_s": round(timings.get("inference_s", 0.0), 1),
            "source": source, "nn_search": (record.get("evaluation") or {}).get("nearest_neighbour", {}).get("search", ""),
            "git_sha": (record.get("git_sha") or "")[:12], "cpu": (record.get("device") or {}).get("cpu", ""),
            "torch_threads": record["config"].get("torch_threads"),
        })
    return sorted(rows, key=lambda r: (r["method"], r["steps"], r["seed"]))


def summarise(rows: list[dict]) -> dict[tuple[str, int], dict]:
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["steps"])].append(row)
    out = {}
    for key, group in sorted(groups.items()):
        out[key] = {"seeds": sorted(r["seed"] for r in group),
                    "train_s": sum(r["train_s"] for r in group) / len(group),
                    "inference_s": sum(r["inference_s"] for r in group) / len(group)}
        for m in METRICS:
            values = [r[m] for r in group]
            out[key][m] = (sum(values) / len(values), min(values), max(values))
    return out


def default_steps() -> dict[str, int]:
    """Each method's default CPU budget (conf/method/<name>.yaml, budget.max_steps)."""
    from omegaconf import OmegaConf

    return {m: int(OmegaConf.load(REPO / "conf" / "method" / f"{m}.yaml").budget.max_steps) for m in STEP_GRID}


def write_table(path: Path, rows: list[dict], category: str) -> None:
    summary = summarise(rows)
    defaults = default_steps()
    cpus = sorted({r.get("cpu") or "not recorded" for r in rows})
    shas = sorted({r.get("git_sha") or "not recorded" for r in rows})
    lines = [f"# Learning curves: real MVTec AD {category}", "",
             f"Written by `python scripts/learning_curves.py` (see its docstring); one row per method and step budget, "
             f"mean over seeds with the [min, max] range. trainer=cpu, torch_threads=1, image sizes and everything "
             f"else as each method's default config; **reduced budgets, not paper reproductions**. "
             f"Steps marked * are the method's default CPU budget (`budget.max_steps`). Train time of a step "
             f"checkpoint = its share of the run that saved it. Patch SVDD tested with nn_search=ivf. "
             f"CPU: {', '.join(cpus)}; git: {', '.join(shas)}. Per-run rows: [{category}.csv]({category}.csv); "
             f"figure: [{category}.svg]({category}.svg).", "",
             "| method | steps | seeds | image AUROC | pixel AUROC | PRO | train s | inference s |",
             "|---|---:|---|---|---|---|---:|---:|"]
    for (method, steps), s in summary.items():
        cells = [f"{s[m][0]:.3f} [{s[m][1]:.3f}, {s[m][2]:.3f}]" for m in METRICS]
        mark = "*" if defaults.get(method) == steps else ""
        lines.append(f"| {method} | {steps}{mark} | {','.join(map(str, s['seeds']))} | {' | '.join(cells)} | "
                     f"{s['train_s']:.0f} | {s['inference_s']:.0f} |")
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_csv(path: Path) -> list[dict]:
    """Rows of an earlier run's CSV (empty when the file is absent), numbers parsed back."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("seed", "steps"):
            row[key] = int(row[key])
        for key in (*METRICS, "image_auroc_map_max", "train_s", "inference_s"):
            if row.get(key) not in (None, ""):
                row[key] = float(row[key])
    return rows


def write_figure(path: Path, rows: list[dict], category: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows)
    defaults = default_steps()
    methods = sorted({m for m, _ in summary})
    cols = 4
    fig, axes = plt.subplots((len(methods) + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.7 * ((len(methods) + cols - 1) // cols)),
                             squeeze=False, sharey=True)
    colours = {"image_auroc": "tab:blue", "pixel_auroc": "tab:orange", "pro": "tab:green"}
    for ax, method in zip(axes.flat, methods):
        keys = sorted(s for m, s in summary if m == method)
        for metric in METRICS:
            mean = [summary[(method, s)][metric][0] for s in keys]
            low = [summary[(method, s)][metric][0] - summary[(method, s)][metric][1] for s in keys]
            high = [summary[(method, s)][metric][2] - summary[(method, s)][metric][0] for s in keys]
            ax.errorbar(keys, mean, yerr=[low, high], marker="o", ms=3, capsize=2, color=colours[metric],
                        label=metric.replace("_", " "))
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        if method in defaults:
            ax.axvline(defaults[method], color="black", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(keys, [str(k) for k in keys])
        ax.minorticks_off()
        ax.set_title(method, fontsize=9)
        ax.set_ylim(0.0, 1.0)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(METRICS), fontsize=8, frameon=False)
    fig.suptitle(f"MVTec AD {category}: metric vs training steps (mean, min-max over seeds; dashed: default budget; "
                 f"dotted: chance)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    atomic_write(path, lambda handle: fig.savefig(handle, format="svg", metadata={"Date": None}))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mvtec-root", help="folder holding the MVTec AD category folders")
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--methods", nargs="+", default=list(STEP_GRID), choices=list(STEP_GRID))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--work", type=Path, default=Path("/tmp/anobench-curves"), help="run folders (not committed)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "learning_curves")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the table and figure from --work")
    args = parser.parse_args()
    if not args.collect_only:
        if not args.mvtec_root or not (Path(args.mvtec_root) / args.category / "train" / "good").is_dir():
            parser.error(f"--mvtec-root: expected a folder holding {args.category}/train/good, got {args.mvtec_root!r}")
        run_all(plan(args.methods, args.seeds, args.category, str(Path(args.mvtec_root).resolve()), args.work.resolve()),
                args.n_jobs)
    rows = [r for r in collect(args.work) if r["category"] == args.category and r["method"] in args.methods]
    if not rows:
        sys.exit(f"--work {args.work}: no finished runs of category {args.category!r} under runs/")
    # a curve re-run for some methods keeps the committed rows of the others
    kept = [r for r in read_csv(args.out / f"{args.category}.csv") if r["method"] not in args.methods]
    rows = sorted(rows + kept, key=lambda r: (r["method"], r["steps"], r["seed"]))
    atomic_write_csv(args.out / f"{args.category}.csv", rows)
    write_table(args.out / f"{args.category}.md", rows, args.category)
    write_figure(args.out / f"{args.category}.svg", rows, args.category)
    print(f"wrote {args.out / args.category}.csv / .md / .svg ({len(rows)} runs)")


if __name__ == "__main__":
    main()
