"""The `anobench` command: a verb, then Hydra overrides (train, eval) or plain options (the rest).

    anobench train [method=patch_svdd] [data=synthetic/washer] [trainer=cpu] [key=value ...] [-m ...]
    anobench eval checkpoint=<run dir>/checkpoints/last.ckpt [evaluation.resolution=model]
    anobench eval method=patch_svdd data=mvtec/<category> weights.released=<the authors' enchier.pkl>
    anobench predict checkpoint=<run dir>/checkpoints/last.ckpt input=<file | folder | glob> [output=DIR]
    anobench bench suite=<name> [results_dir=DIR] [n_jobs=N | hydra/launcher=submitit_slurm ...] [dry_run=true] [...]
    anobench leaderboard [--results-dir results]
    anobench report [--results-dir results] [--output FILE]
    anobench reproduce --check <results dir> [--allow-reduced] [--category NAME] | --check <suite> --expected | --write-expected <suite>
    anobench data download {mvtec,visa,btad,mpdd} --root DIR [--archive FILE] [--url URL]
    anobench data synth --root DIR [--category weave ...]

Hydra verbs are dispatched on argv before the @hydra.main function is built, so each verb has its
own primary config (conf/train.yaml, conf/eval.yaml) and all of Hydra's flags (-m, --cfg, ...) work.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from anobench.config import (
    COMMAND_ENV, DATA_DIR_ENV, DATASET_ROOT_ENVS, GROUPS, JOB_LOG_ENV, config_dir, default_results_dir,
    group_options,
)
from anobench.errors import AnobenchError
from anobench.tasks.ddp import job_argv, rank_command

HYDRA_VERBS = {"train": ("train", "anobench.tasks.train:train"), "eval": ("eval", "anobench.tasks.evaluate:evaluate")}
# `anobench eval ... weights.released=<file>`: a paper's released weights on the train config of method and data
RELEASED_CONFIG = "eval_released"
RELEASED_OVERRIDE = "weights.released="
ZERO_JOBS_HINT = (
    "the sweep expanded to zero jobs. Hydra's glob() does not see nested groups such as mvtec/*: "
    "use `sweep=mvtec` (all 15 MVTec AD categories) or `sweep=synthetic`, or list the options, "
    "e.g. data=mvtec/bottle,mvtec/cable"
)


def usage() -> str:
    root = config_dir()
    lines = [
        "usage: anobench <command> [overrides or options]",
        "",
        "commands:",
        "  train        fit a method on a category, test it, write result.json and the leaderboard",
        "               e.g. anobench train method=patch_svdd data=mvtec/bottle data.root=/path/to/mvtec",
        "               sweep: anobench train -m sweep=mvtec method=patch_svdd [hydra/launcher=joblib]",
        "  eval         re-test a checkpoint: anobench eval checkpoint=<run dir>/checkpoints/last.ckpt",
        "               or a paper's released weights: anobench eval method=patch_svdd data=mvtec/bottle\n"
        "               weights.released=<the authors' ckpts/bottle/enchier.pkl> (budget 'paper (released weights)', ‡)",
        "  predict      score your own images: anobench predict checkpoint=<run dir>/checkpoints/last.ckpt\n"
        "               input=<file | folder | glob> [output=DIR] [threshold=<number>]: scores.csv, maps/, overlays/",
        "  bench        run a suite (methods × categories × seeds), resumable, one leaderboard per suite",
        "               e.g. anobench bench suite=synthetic_quick [n_jobs=2]; suite=method method=<name>",
        "               on SLURM: ... hydra/launcher=submitit_slurm hydra.launcher.partition=<p>",
        "               suites: " + ", ".join(group_options("suite", root)),
        "  leaderboard  rebuild <dir>/leaderboard.{md,csv} and report.html from the result files\n"
        "               (--results-dir DIR; default outputs/, the committed ones: --results-dir results)",
        "  report       write <dir>/report.html: leaderboard, each run's heatmaps/curves and provenance",
        "  reproduce    reproduce --check DIR [--allow-reduced] [--category NAME]: ours vs the papers' numbers, within tolerance?",
        "               --check SUITE --expected | --write-expected SUITE: a suite vs its stored expected ranges",
        "  data         data download {mvtec,visa,btad,mpdd} --root DIR [--archive FILE] [--url URL]\n"
        "               | data synth --root DIR",
        "",
        "Hydra flags work after train/eval: --cfg job, --info, -m/--multirun, hydra/launcher=joblib.",
        "",
    ]
    for group in GROUPS:
        lines.append(f"{group} options ({group}=<option>):")
        options = group_options(group, root)
        lines.append("  " + (", ".join(options) if options else "(none)"))
    lines += ["", f"configs: {root}"]
    return "\n".join(lines)


def _load(target: str) -> Callable:
    import importlib

    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _multirun_requested(args: Sequence[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in args)


def config_name_for(verb: str, args: Sequence[str]) -> str:
    """The primary config of a Hydra verb: eval.yaml, or eval_released.yaml when `weights.released=` is set."""
    if verb == "eval" and any(a.lstrip("+~").startswith(RELEASED_OVERRIDE) for a in args):
        return RELEASED_CONFIG
    return HYDRA_VERBS[verb][0]


def run_hydra_verb(verb: str, args: list[str]) -> int:
    """Run a Hydra task with `args` as its command line; returns the process exit code."""
    import hydra

    config_name, target = config_name_for(verb, args), HYDRA_VERBS[verb][1]
    task = _load(target)

    def entry(cfg):  # noqa: ANN001 - Hydra passes a DictConfig
        try:
            return task(cfg)
        except AnobenchError as error:  # bad input: the failed result.json is written; the message says it all
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
            raise SystemExit(2) from None

    entry.__module__ = __name__
    multirun = _multirun_requested(args)
    # JOB_LOG_ENV already set: this is a job (or a DDP rank) that an outer anobench command runs as its own
    # process (anobench.tasks.ddp.run_job_process); the outer command reports its result, this one records it.
    inner = JOB_LOG_ENV in os.environ
    job_log = None if inner else Path(tempfile.mkstemp(prefix="anobench-jobs-", suffix=".tsv")[1])
    if job_log is not None:
        os.environ[JOB_LOG_ENV] = str(job_log)
        os.environ[COMMAND_ENV] = shlex.join(["anobench", verb, *args])
    code, jobs = 0, []
    try:
        # argv = the overrides: Lightning's DDP launcher starts the other ranks by re-running it (anobench.tasks.ddp)
        with job_argv(verb, args):
            hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(entry)()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        if job_log is not None:
            os.environ.pop(JOB_LOG_ENV, None)
            jobs = [line.split("\t") for line in job_log.read_text().splitlines() if line.strip()]
            job_log.unlink(missing_ok=True)
    if code or inner:
        return code
    if not multirun:
        return _report(jobs)
    if not jobs and not any(a.startswith(("--cfg", "--info", "-c", "--help", "-h", "--hydra-help")) for a in args):
        print(f"error: {ZERO_JOBS_HINT}", file=sys.stderr)
        return 2
    return _report(jobs)


def _report(jobs: list[list[str]]) -> int:
    """Rebuild and print the leaderboard rows of the jobs just run; non-zero if any failed."""
    from anobench.results.render import print_leaderboard
    from anobench.tasks.publish import publish
    from anobench.results.record import read_result

    if not jobs:
        return 0
    records = [read_result(path) for path, _ in jobs]
    for results_dir in dict.fromkeys(results_dir for _, results_dir in jobs):
        board = publish(results_dir)
        # This command's rows only: no mean over categories (maybe committed ones) it did not run.
        print_leaderboard(board, only={(r["dataset"], r["category"]) for r in records})
        print(f"leaderboard of every run in {results_dir}: {Path(results_dir) / 'leaderboard.md'}, "
              f"{Path(results_dir) / 'report.html'}")
    failed = [r for r in records if r["status"] != "ok"]
    for record in failed:
        print(f"failed: {record['method']} {record['dataset']}/{record['category']} seed {record['seed']}: "
              f"{record['error']['type']}: {record['error']['message']}", file=sys.stderr)
    print(f"{len(records) - len(failed)} of {len(records)} run(s) ok; run folders (result.json, config.yaml, "
          f"checkpoints/, figures/):")
    for path, _ in jobs:
        print(f"  {Path(path).parent}")
    return 1 if failed else 0


def leaderboard_command(args: list[str]) -> int:
    from anobench.results.leaderboard import build_leaderboard, collect_results, select_metrics
    from anobench.results.render import print_leaderboard
    from anobench.tasks.publish import publish

    parser = argparse.ArgumentParser(prog="anobench leaderboard",
                                     description="Rebuild leaderboard.{md,csv} from <results-dir>/runs/**/result.json")
    parser.add_argument("--results-dir", default=str(default_results_dir()))
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metric tables to print, e.g. image_ap,pixel_ap,image_f1_max,pixel_f1_max, "
                             "or all (default: image_auroc,pixel_auroc,pro; the written files keep the default tables)")
    ns = parser.parse_args(args)
    metrics = select_metrics(ns.metrics)  # an unknown name fails here, before anything is written
    if not Path(ns.results_dir).is_dir():
        raise AnobenchError(f"--results-dir {ns.results_dir}: no such folder")
    board = publish(ns.results_dir)
    if board.metrics != metrics:  # the same result files, aggregated over the requested metrics
        results, warnings = collect_results(ns.results_dir)
        board = build_leaderboard(results, warnings=warnings, metrics=metrics)
    print_leaderboard(board)
    print(f"wrote {Path(ns.results_dir) / 'leaderboard.md'}, leaderboard.csv and report.html ({len(board.runs)} runs)")
    return 0


def report_command(args: list[str]) -> int:
    from anobench.visualize.report import REPORT_FILE, write_report

    parser = argparse.ArgumentParser(prog="anobench report",
                                     description="Write one static HTML page (opens from disk) for a results folder")
    parser.add_argument("--results-dir", default=str(default_results_dir()))
    parser.add_argument("--output", default=None, help=f"default: <results-dir>/{REPORT_FILE}")
    ns = parser.parse_args(args)
    if not Path(ns.results_dir).is_dir():
        raise AnobenchError(f"--results-dir {ns.results_dir}: no such folder")
    path = write_report(ns.results_dir, output=ns.output)
    print(f"wrote {path}; open it in a browser: file://{path.resolve()}")
    return 0


def data_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="anobench data", description="Get or generate datasets")
    sub = parser.add_subparsers(dest="action", required=True)
    download = sub.add_parser("download", help="download (resumable), verify and extract a dataset archive")
    download.add_argument("dataset", choices=list(DATASET_ROOT_ENVS))
    download.add_argument("--root", default=None,
                          help="folder to extract into (default: $ANOBENCH_MVTEC_ROOT, $ANOBENCH_VISA_ROOT, ...)")
    download.add_argument("--archive", default=None, help="an archive downloaded by hand (verified the same way)")
    download.add_argument("--url", default=None, help="download from this URL instead of the built-in link")
    synth = sub.add_parser("synth", help="generate the synthetic categories (MVTec layout)")
    synth.add_argument("--root", default=os.path.join(os.environ.get(DATA_DIR_ENV, "data"), "synthetic"))
    synth.add_argument("--category", action="append", help="default: all synthetic categories")
    synth.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(args)
    if ns.action == "download":
        from anobench.data.download import DATASETS, download_dataset

        env = DATASET_ROOT_ENVS[ns.dataset]
        root = ns.root or os.environ.get(env)
        if not root:
            raise AnobenchError(f"anobench data download {ns.dataset}: give --root DIR or set {env}")
        root = download_dataset(ns.dataset, root, archive=Path(ns.archive) if ns.archive else None, url=ns.url)
        print(f"{DATASETS[ns.dataset].title} ready in {root}; train with data={ns.dataset}/<category> "
              f"data.root={root}, or export {env}={root}")
        return 0
    from anobench.data import SYNTHETIC_CATEGORIES, ensure_synthetic

    for category in ns.category or sorted(SYNTHETIC_CATEGORIES):
        print(ensure_synthetic(ns.root, category, seed=ns.seed))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = rank_command(args) or (args[0], args[1:])  # a DDP rank Lightning started re-runs its job's verb
    try:
        if verb in HYDRA_VERBS:
            return run_hydra_verb(verb, rest)
        if verb == "leaderboard":
            return leaderboard_command(rest)
        if verb == "report":
            return report_command(rest)
        if verb == "predict":
            from anobench.tasks.predict import predict_command

            return predict_command(rest)
        if verb == "data":
            return data_command(rest)
        if verb == "bench":
            from anobench.tasks.bench import bench_command

            return bench_command(rest)
        if verb == "reproduce":
            from anobench.tasks.reproduce import reproduce_command

            return reproduce_command(rest)
    except AnobenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"error: unknown command {verb!r}; expected one of: train, eval, predict, bench, leaderboard, report, "
          "reproduce, data"
          f"\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
