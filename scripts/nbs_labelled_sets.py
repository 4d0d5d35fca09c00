"""NBS over several labelled sets: how much the choice of labelled images moves its image and pixel AUROC.

    python scripts/nbs_labelled_sets.py --labelled-seeds 0 1 2 3 4 -- paths.mvtec_root=/data/mvtec_ad data=mvtec/bottle
    python scripts/nbs_labelled_sets.py --labelled-seeds 0 1 2 3 4 -- data=synthetic/weave method.module.image_loss_weight=1

One fit per labelled seed (`method.module.labelled_seed`), each at the method's default config plus the given
overrides of `anobench train` (trainer=cpu, one torch thread), then the test stage. Prints one JSON row per
fit (image AUROC of the method's score, pixel AUROC, PRO, the image AUROC of every candidate map pooling,
the numbers of evaluated and good images) and the mean [min, max] over the fits. The measurements behind
anobench/methods/nbs/README.md, "Why the image score fell below chance", were made with this computation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def fit_once(overrides: list[str], labelled_seed: int, scratch: Path) -> dict:
    """One NBS fit and test at `labelled_seed`; the row described in the module docstring."""
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir
    from anobench.tasks import run

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "method=nbs", "trainer=cpu", "torch_threads=1", f"paths.results_dir={scratch / 'results'}",
            *overrides, f"method.module.labelled_seed={labelled_seed}"])
    start = time.perf_counter()
    _, _, outcome = run.fit_and_evaluate(cfg, scratch / "run")
    labels = outcome.predictions.labels[outcome.indices]
    return {"method": "nbs", "dataset": str(cfg.data.dataset), "category": str(cfg.data.category), "seed": int(cfg.seed),
            "labelled_seed": labelled_seed, "seconds": round(time.perf_counter() - start, 1),
            "image_auroc": outcome.metrics["image_auroc"], "pixel_auroc": outcome.metrics["pixel_auroc"],
            "pro": outcome.metrics["pro"], "image_auroc_by_pooling": outcome.evaluation.image_auroc_by_pooling,
            "n_evaluated": len(labels), "n_good": int((labels == 0).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, help="append the rows to this JSON-lines file (scripts/map_pooling.py reads it)")
    parser.add_argument("overrides", nargs="*", help="overrides of `anobench train` (after --)")
    ns = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nbs_labelled_") as scratch:
        for seed in ns.labelled_seeds:
            row = fit_once(ns.overrides, seed, Path(scratch) / f"l{seed}")
            rows.append(row)
            print(json.dumps(row), flush=True)
            if ns.out:
                with ns.out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(row) + "\n")
    for key in ("image_auroc", "pixel_auroc", "pro"):
        values = [row[key] for row in rows if row[key] is not None]
        if values:
            print(f"{key}: mean {sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}] "
                  f"over {len(values)} labelled sets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
