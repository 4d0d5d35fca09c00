"""Uninformed Students: metrics of every single-scale map and of their mean, at several training steps.

    python scripts/us_scales.py --steps 600 1200 2400 --out /tmp/us.csv -- paths.mvtec_root=/data/mvtec_ad \\
        data=mvtec/bottle 'method.module.patch_sizes=[17,33]' [any other override of `anobench train`]

One fit (the method's default config plus the overrides, trainer=cpu, one torch thread) to the largest step
count, saving `checkpoint_steps` at every requested step (the weights of a run stopped there; a scratch folder
holds them). For each step the test set is scored
once and image AUROC (map maximum), pixel AUROC and PRO are computed, with the MVTec protocol of
`anobench.metrics.evaluate_category`, for each receptive field's standardised map (`p17`, `p33`, ...) and,
with several fields, for their mean (`mean`, what the method reports). This separates "which scale carries the
map" from "how long to train": the measurements behind the default `patch_sizes`, `lr` and budget in
anobench/methods/uninformed_students/README.md ("Measured here"). Prints one JSON row per (step, map) and,
with --out, writes them as a CSV (atomically). Nothing here is timed for a claim; fit_s is for orientation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", type=int, required=True, help="training steps to evaluate at")
    parser.add_argument("--out", type=Path, help="CSV of the rows (also printed as JSON lines)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    args = parser.parse_args()
    if any(s < 1 for s in args.steps):
        parser.error(f"--steps {args.steps}: expected positive step counts")

    import torch
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir
    from anobench.io import atomic_write_csv
    from anobench.metrics import evaluate_category
    from anobench.tasks import run

    steps = sorted(set(args.steps))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["method=uninformed_students", "trainer=cpu", "torch_threads=1",
                                                      "trainer.max_epochs=-1", f"trainer.max_steps={steps[-1]}",
                                                      f"checkpoint_steps=[{','.join(map(str, steps))}]", *args.overrides])
    if cfg.method.name != "uninformed_students":
        parser.error(f"method={cfg.method.name}: this script measures uninformed_students only")
    built = run.build(cfg)
    datamodule, module = built.datamodule, built.module
    with tempfile.TemporaryDirectory() as scratch:  # nothing of the fit is kept but the step checkpoints' weights
        start = time.perf_counter()
        trainer = run.build_trainer(cfg.trainer, Path(scratch), logger=False,
                                    callbacks=run.fit_callbacks(cfg, Path(scratch)), enable_checkpointing=False,
                                    enable_progress_bar=False)
        trainer.fit(module, datamodule=datamodule)
        fit_s = time.perf_counter() - start
        files = {step: Path(scratch) / "checkpoints" / f"step{step}.ckpt" for step in steps}
        if not all(f.is_file() for f in files.values()):
            sys.exit(f"--steps {steps}: the fit stopped at step {trainer.global_step} before reaching them all")
        weights = {step: torch.load(f, map_location="cpu", weights_only=False)["state_dict"] for step, f in files.items()}
    datamodule.setup("test")
    samples = datamodule.test_samples
    masks = [datamodule.load_mask(i) for i in range(len(samples))]
    labels = np.array([s.label for s in samples])
    rows = []
    for step, state in weights.items():
        module.load_state_dict(state)
        module.eval()
        module.prepare_inference(datamodule.inference_train_dataloader())
        maps: dict[str, list[np.ndarray]] = {f"p{p}": [] for p in module.model.patch_sizes}
        with torch.no_grad():
            for batch in datamodule.test_dataloader():
                for p, m in module.model.score_maps(batch["image"].to(module.device)).items():
                    maps[f"p{p}"].extend(m.cpu().numpy())
        if len(maps) > 1:
            maps["mean"] = list(np.mean(list(maps.values()), axis=0))
        for name, per_image in maps.items():
            metrics = evaluate_category(per_image, [float(m.max()) for m in per_image], masks, labels).metrics
            row = {"category": str(cfg.data.category), "seed": int(cfg.seed), "step": step, "map": name,
                   **{k: round(float(metrics[k]), 4) for k in ("image_auroc", "pixel_auroc", "pro")},
                   "fit_s_all_steps": round(fit_s, 1), "overrides": " ".join(args.overrides)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        atomic_write_csv(args.out, rows)


if __name__ == "__main__":
    main()
