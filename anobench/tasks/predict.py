"""`anobench predict checkpoint=<run>/checkpoints/last.ckpt input=<file | folder | glob> [output=DIR]`: score
unlabelled images with a trained run.

The run's config.yaml rebuilds the method and its data (`anobench.tasks.evaluate.load_run_config`, as eval does),
the checkpoint's weights are loaded, and the inference state is rebuilt from the run's training images exactly as
the test stage rebuilds it (`anobench.tasks.inference.Inference`). Each input image is converted as the training
images are (`anobench.data.datamodule.input_pixels`: any PIL-readable PNG, JPEG, BMP or TIFF, greyscale, palette,
16-bit and RGBA included), scored in batches of the run's eval batch size, in sorted path order, and its map is
upsampled to the image's own size with the evaluator's resize (`anobench.metrics.evaluate.upsample_map`). A method
whose image score is normalised over the test set (MNAD's min-max) is scored with the normalisation the run's
result.json recorded (``evaluation.score_reference``), so predict on the run's own test images gives eval's scores.

Output (written in a hidden folder beside it, moved into place at the end: nothing half-written):

    <output>/scores.csv              path, score, decision, threshold, threshold_mode, optimistic, pixel_threshold,
                                     defect_fraction, map, overlay: one row per scored image
    <output>/maps/<name>.tiff        float32 anomaly map at the image's original resolution
    <output>/overlays/<name>.png     the image with the predicted region (map >= pixel threshold) outlined in red
    <output>/predict.json            the run, checkpoint, thresholds used, how the score was normalised, skipped files

An unreadable file (or one the model cannot score, e.g. an image NBS never tracked) is skipped and listed at the
end; the command then exits 1.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anobench.config import config_dir, dataset_label
from anobench.data.datamodule import input_pixels, input_tensor
from anobench.data.mvtec import IMAGE_SUFFIXES, load_image
from anobench.errors import AnobenchError, ConfigError
from anobench.io import atomic_write_csv, atomic_write_text
from anobench.metrics.evaluate import upsample_map
from anobench.quiet import RANK_ZERO_LOGGERS
from anobench.results.record import RESULT_FILE
from anobench.tasks import ddp, run
from anobench.tasks.evaluate import apply_overrides, load_run_config
from anobench.tasks.inference import Inference
from anobench.tasks.thresholds import Threshold, fixed_values, read_thresholds, threshold_label

SUFFIXES = frozenset(IMAGE_SUFFIXES | {".tif", ".tiff"})
SCORES_FILE = "scores.csv"
SUMMARY_FILE = "predict.json"
MAPS_DIR = "maps"
OVERLAYS_DIR = "overlays"
PREDICTIONS_DIR = "predictions"  # default output: <run dir>/predictions/<date-time>
OUTLINE_COLOUR = (255, 0, 0)
SCORE_COLUMNS = ("path", "score", "decision", "threshold", "threshold_mode", "optimistic", "pixel_threshold",
                 "defect_fraction", "map", "overlay")


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class PredictReport:
    """What `predict` wrote: the output folder, one row per scored image, the files it skipped."""

    output: Path
    rows: list[dict[str, Any]]
    skipped: list[Skipped]
    summary: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- config
def predict_config(args: Sequence[str]) -> DictConfig:
    """conf/predict.yaml with the command line's `key=value` overrides (Hydra's override grammar)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("predict", overrides=list(args))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(f"anobench predict {' '.join(args)}: {error}".strip()) from None
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    for key in ("checkpoint", "input"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ConfigError(f"anobench predict needs {key}=...; usage: anobench predict "
                              "checkpoint=<run dir>/checkpoints/last.ckpt input=<file | folder | glob> [output=DIR]")
    return cfg


def run_config(cfg: DictConfig, checkpoint: Path) -> DictConfig:
    """The trained run's config (as anobench eval loads it) with predict's data_root, overrides and accelerator."""
    run_cfg = load_run_config(checkpoint)
    if cfg.get("data_root") is not None:
        run_cfg.data.root = cfg.data_root
    apply_overrides(run_cfg, cfg.get("overrides") or {})
    accelerator = cfg.get("accelerator")
    if accelerator is None and str(run_cfg.trainer.get("accelerator")) in ("gpu", "cuda"):
        import torch

        accelerator = None if torch.cuda.is_available() else "cpu"  # a GPU run scored on a machine without one
    if accelerator is not None:
        run_cfg.trainer.accelerator = accelerator
    return run_cfg


# -------------------------------------------------------------------------------------------- input
def list_inputs(spec: str, exclude: Path | None = None) -> tuple[list[Path], Path]:
    """The image files of `input` (a file, a folder searched recursively, or a glob), in sorted path order,
    and the folder their output names are relative to. Files with other suffixes in a folder are ignored."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise ConfigError(f"input={spec}: {path.suffix or 'no suffix'} is not a supported image type; "
                              f"expected one of {', '.join(sorted(SUFFIXES))}")
        return [path], path.parent
    if path.is_dir():
        files, base = [p for p in path.rglob("*") if p.is_file()], path
    elif glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file()]
        base = Path(os.path.commonpath([str(p.parent.absolute()) for p in files])) if files else Path(".")
    else:
        raise ConfigError(f"input={spec}: no such file or folder (nor a glob pattern such as 'images/*.png')")
    skip = None if exclude is None else exclude.absolute()
    files = sorted(p for p in files if p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.absolute().relative_to(base.absolute()).parts)
                   and (skip is None or skip not in p.absolute().parents))
    if not files:
        raise ConfigError(f"input={spec}: no image files found; expected files ending in "
                          f"{', '.join(sorted(SUFFIXES))}")
    return files, base


def output_names(files: Sequence[Path], base: Path) -> list[str]:
    """A unique output name per file: its path relative to `base` without the suffix ("good/000"); files that
    would share one keep their suffix in it ("a_png", "a_jpg")."""
    relative = [p.absolute().relative_to(base.absolute()) for p in files]
    names = [r.with_suffix("").as_posix() for r in relative]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name}_{r.suffix.lstrip('.').lower()}" for name, r in zip(names, relative)]


# ----------------------------------------------------------------------------------------- pictures
def outline(region: np.ndarray) -> np.ndarray:
    """The boundary pixels of a bool region, about 1/300 of the image's longer side thick."""
    from scipy import ndimage

    edge = region & ~ndimage.binary_erosion(region, border_value=0)
    width = max(1, round(max(region.shape) / 300))
    return ndimage.binary_dilation(edge, iterations=width - 1) if width > 1 and edge.any() else edge


def overlay_image(image: Any, region: np.ndarray | None) -> Any:
    """The RGB image with `region`'s outline drawn in red (no region: the image as it is)."""
    from PIL import Image

    pixels = np.array(image, dtype=np.uint8)
    if region is not None and region.any():
        pixels[outline(region)] = OUTLINE_COLOUR
    return Image.fromarray(pixels, mode="RGB")


# ------------------------------------------------------------------------------------------ predict
def unreadable_reason(error: BaseException) -> str:
    """Why a file could not be read, in a line: the decoder's own message (load_image's DataError wraps it)."""
    cause = error.__context__ if isinstance(error, AnobenchError) and error.__context__ is not None else error
    return f"not a readable image ({type(cause).__name__}: {cause})"


@contextlib.contextmanager
def _quiet_trainer_construction() -> Iterator[None]:
    """Lightning's "GPU available: ..." lines, at INFO, while the trainer is built."""
    loggers = [logging.getLogger(name) for name in RANK_ZERO_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def decide(value: float, threshold: Threshold | None) -> str:
    if threshold is None or threshold.value is None:
        return ""
    return "anomalous" if value >= threshold.value else "normal"


def run_record(checkpoint: Path, result: str | None = None) -> dict[str, Any]:
    """The result.json whose thresholds and score reference predict uses: `result` when given (e.g. an eval's
    of this checkpoint), else the run's own when it describes `checkpoint` ({} otherwise: another checkpoint, or
    a failed run)."""
    if result is not None:
        path = Path(result).expanduser()
        if not path.is_file():
            raise ConfigError(f"result={result}: no such file (expected a result.json of this checkpoint)")
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("status") != "ok":
            raise ConfigError(f"result={result}: the run failed; it records no thresholds")
        return record
    run_dir = checkpoint.resolve().parent.parent
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return {}
    record = json.loads(path.read_text(encoding="utf-8"))
    written = record.get("checkpoint")
    if record.get("status") != "ok" or (written and (run_dir / written).resolve() != checkpoint.resolve()):
        return {}
    return record


def chosen_thresholds(cfg: DictConfig, record: dict[str, Any]) -> dict[str, Threshold]:
    """`threshold=` of the command (a number, or {image, pixel}), else the run's recorded thresholds."""
    given = cfg.get("threshold")
    if given is None:
        return read_thresholds(record)
    if isinstance(given, str):
        raise ConfigError(f"threshold={given!r}: anobench predict takes a number or {{image: <number>, pixel: "
                          "<number>}; without it, it uses the thresholds the run recorded (train with threshold=...)")
    return {level: Threshold(value, "command line") for level, value in fixed_values(given).items()}


def predict(cfg: DictConfig, *, progress: bool | None = None) -> PredictReport:
    """Score `cfg.input` with the run of `cfg.checkpoint`; write the output folder (module doc)."""
    checkpoint = Path(str(cfg.checkpoint)).expanduser()
    run_cfg = run_config(cfg, checkpoint)
    run_dir = checkpoint.resolve().parent.parent
    output = Path(str(cfg.output)).expanduser() if cfg.get("output") else (
        run_dir / PREDICTIONS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S-%f"))
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"output={output} exists and is not empty; choose a new folder (nothing is overwritten)")
    files, base = list_inputs(str(cfg.input), exclude=output)
    names = output_names(files, base)
    record = run_record(checkpoint, cfg.get("result"))
    thresholds = chosen_thresholds(cfg, record)
    reference = dict(((record.get("evaluation") or {}).get("score_reference")) or {})

    built = run.build(run_cfg)
    run.load_weights(built.module, checkpoint)
    with _quiet_trainer_construction():  # the trainer only lends its device and precision here
        trainer = run.build_trainer(run_cfg.trainer, run_dir, logger=False, enable_progress_bar=False,
                                    enable_model_summary=False, **ddp.SINGLE_PROCESS)
    inference = Inference(built.module, built.datamodule, trainer)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        dm = built.datamodule
        to_pixels = partial(input_pixels, size=dm.image_size, interpolation=dm.interpolation)
        rows, skipped, notes = _score_files(inference, to_pixels, dm.eval_batch_size,
                                            files, names, staging, thresholds, reference,
                                            cfg.get("progress", True) if progress is None else progress)
        image_t, pixel_t = thresholds.get("image"), thresholds.get("pixel")
        if image_t is None:
            notes.append("no image threshold: the decision column is empty (train with threshold=..., or pass "
                         "threshold=<number>)")
        if pixel_t is None or pixel_t.value is None:
            notes.append("no pixel threshold: the overlays outline nothing (train with threshold=..., or pass "
                         "threshold=<number> or threshold={image: <number>, pixel: <number>})")
        if any(t.optimistic for t in thresholds.values()):
            notes.append("the thresholds are F1-optimal on the run's labelled test set (threshold=f1_test): "
                         "optimistic, chosen on the data they were scored on")
        summary = {
            "checkpoint": str(checkpoint), "method": run_cfg.method.name,
            "dataset": dataset_label(run_cfg.data), "category": run_cfg.data.category, "seed": run_cfg.seed,
            "input": str(cfg.input), "n_inputs": len(files), "n_scored": len(rows),
            "thresholds": {level: {**t.as_record(), "label": threshold_label(thresholds, level)}
                           for level, t in thresholds.items()},
            "score_reference": reference or None,
            "skipped": [vars(s) for s in skipped], "notes": notes,
        }
        if rows:
            atomic_write_csv(staging / SCORES_FILE, rows)
        else:  # every input skipped: the header alone
            atomic_write_text(staging / SCORES_FILE, ",".join(SCORE_COLUMNS) + "\n")
        atomic_write_text(staging / SUMMARY_FILE, json.dumps(summary, indent=1, default=str) + "\n")
        if output.exists():
            output.rmdir()  # empty (checked above): the finished folder takes its place
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PredictReport(output=output, rows=rows, skipped=skipped, summary=summary)


def _score_files(inference: Inference, to_pixels: Callable[[Any], np.ndarray], batch_size: int, files: Sequence[Path],
                 names: Sequence[str],
                 staging: Path, thresholds: dict[str, Threshold], reference: dict[str, float], show_progress: bool
                 ) -> tuple[list[dict[str, Any]], list[Skipped], list[str]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import tifffile

    rows: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    notes: list[str] = []
    image_t, pixel_t = thresholds.get("image"), thresholds.get("pixel")
    pixel_value = None if pixel_t is None else pixel_t.value
    (staging / MAPS_DIR).mkdir()
    (staging / OVERLAYS_DIR).mkdir()
    module = inference.module

    def write(path: Path, name: str, image: Any, anomaly_map: np.ndarray, score: float) -> None:
        width, height = image.size
        full = np.ascontiguousarray(upsample_map(anomaly_map, (height, width)), dtype=np.float32)
        map_file = f"{MAPS_DIR}/{name}.tiff"
        overlay_file = f"{OVERLAYS_DIR}/{name}.png"
        (staging / map_file).parent.mkdir(parents=True, exist_ok=True)
        (staging / overlay_file).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(staging / map_file, full)
        region = None if pixel_value is None else full >= pixel_value
        overlay_image(image, region).save(staging / overlay_file)
        rows.append({
            "path": str(path), "score": repr(float(score)), "decision": decide(score, image_t),
            "threshold": "" if image_t is None or image_t.value is None else repr(image_t.value),
            "threshold_mode": "" if image_t is None else image_t.mode,
            "optimistic": str(any(t.optimistic for t in thresholds.values())).lower(),
            "pixel_threshold": "" if pixel_value is None else repr(pixel_value),
            "defect_fraction": "" if region is None else f"{float(region.mean()):.6g}",
            "map": map_file, "overlay": overlay_file,
        })

    def score(batch: list[tuple[Path, str, Any]]) -> None:
        images = input_tensor(np.stack([to_pixels(image) for _, _, image in batch]))
        try:
            outputs = [inference(images)]
            members = [batch]
        except ValueError:  # the model refuses some image (NBS: one it never tracked): find which, one at a time
            outputs, members = [], []
            for item in batch:
                try:
                    outputs.append(inference(input_tensor(to_pixels(item[2])[None])))
                    members.append([item])
                except ValueError as error:
                    skipped.append(Skipped(str(item[0]), f"the model cannot score it: {error}"))
        for out, items in zip(outputs, members):
            if out.score_parts is not None and not reference and module.score_reference(out.score_parts.numpy()):
                note = (f"{module.method_name}'s image score is normalised over a test set, and the run records no "
                        "score_reference: the scores are the per-image part (pred_score)")
                if note not in notes:
                    notes.append(note)
            image_scores = inference.image_scores([out], reference)
            for (path, name, image), anomaly_map, value in zip(items, out.anomaly_map.numpy(), image_scores):
                write(path, name, image, anomaly_map, float(value))

    console = Console(stderr=True)
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not show_progress) as bar:
        task = bar.add_task("predict", total=len(files))
        batch: list[tuple[Path, str, Any]] = []
        for path, name in zip(files, names):
            try:
                batch.append((path, name, load_image(path)))
            except Exception as error:  # noqa: BLE001 - any unreadable file is skipped and listed, never fatal
                skipped.append(Skipped(str(path), unreadable_reason(error)))
                bar.advance(task)
            if len(batch) == batch_size:
                score(batch)
                bar.advance(task, len(batch))
                batch = []
        if batch:
            score(batch)
            bar.advance(task, len(batch))
    return rows, skipped, notes


# ------------------------------------------------------------------------------------------ command
def predict_command(args: Sequence[str]) -> int:
    """`anobench predict ...`: 0 when every input was scored, 1 when some were skipped (listed on stderr)."""
    cfg = predict_config(args)
    report = predict(cfg)
    summary = report.summary
    print(f"scored {len(report.rows)} of {summary['n_inputs']} image(s) with {summary['method']} "
          f"({summary['dataset']}/{summary['category']}, seed {summary['seed']})")
    for level in ("image", "pixel"):
        used = summary["thresholds"].get(level)
        print(f"  {level} threshold: " + ("none" if not used or used["value"] is None
                                          else f"{used['value']:.6g} ({used['label']})"))
    for note in summary["notes"]:
        print(f"  note: {note}")
    print(f"wrote {report.output}/: {SCORES_FILE}, {MAPS_DIR}/ (float32 TIFF maps at each image's size), "
          f"{OVERLAYS_DIR}/ (predicted region outlined), {SUMMARY_FILE}")
    if report.skipped:
        print(f"error: {len(report.skipped)} file(s) skipped:", file=sys.stderr)
        for item in report.skipped:
            print(f"  {item.path}: {item.reason}", file=sys.stderr)
        return 1
    return 0
