"""`anobench eval checkpoint=...`: re-test a saved model and write a new result.json.

The training run's config (config.yaml beside checkpoints/) rebuilds the method and the data, so a
checkpoint is evaluated exactly as it was trained; `data_root`, `seed`, `evaluation.*`, `visualize.*` and
`overrides.<key>` may change it (e.g. data moved, or evaluation at model resolution).

`anobench eval method=<m> data=<d> weights.released=<file>` (conf/eval_released.yaml: the train config of
method and data) evaluates a paper's released weights instead: the method's `load_released_weights(path)`
loads them in place of training, and the run pipeline tests as for any checkpoint. The result's budget is
`paper (released weights)` (the leaderboard's ‡) with the file's name and SHA-256, or `released weights
(not the paper's evaluation)` when the config changes the method's paper evaluation settings
(`released_weights_deviations`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anobench.config import over_run_settings
from anobench.errors import ConfigError
from anobench.results.record import RESULT_FILE
from anobench.results.render import RELEASED_BUDGET
from anobench.tasks import run
from anobench.tasks.train import hydra_run_dir, is_multirun
from anobench.visualize.task import eval_visualize_settings

_MISSING = object()
RELEASED_KEY = "weights.released"
# released weights evaluated with settings other than the paper's: shown † (never compared with the paper)
RELEASED_OTHER_EVALUATION = "released weights (not the paper's evaluation)"


def load_run_config(checkpoint: Path) -> DictConfig:
    """The config of the run that wrote `checkpoint` (<run>/checkpoints/<name>.ckpt)."""
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint={checkpoint}: no such file (expected <run dir>/checkpoints/last.ckpt)")
    config_path = checkpoint.resolve().parent.parent / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"checkpoint={checkpoint}: the run's config {config_path} is missing; "
                          "anobench eval needs the run folder written by anobench train")
    return OmegaConf.load(config_path)


def apply_overrides(run_cfg: DictConfig, overrides: DictConfig | dict) -> None:
    """Set each dotted key of `overrides` (nested) in the run's config; a key the run lacks is an error."""
    tree = OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig) else overrides
    for key, value in _flatten(tree).items():
        if OmegaConf.select(run_cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"overrides.{key}: the run's config has no key {key!r} "
                              "(anobench eval only changes settings the trained run already has)")
        OmegaConf.update(run_cfg, key, value, merge=False)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def eval_config(cfg: DictConfig, checkpoint: Path) -> DictConfig:
    """The trained run's config with this eval's settings applied."""
    run_cfg = load_run_config(checkpoint)
    run_cfg.paths.results_dir = cfg.paths.results_dir
    if cfg.seed is not None:
        run_cfg.seed = cfg.seed
    if cfg.data_root is not None:
        run_cfg.data.root = cfg.data_root
    for key in ("resolution", "pro_fpr_limit"):
        if cfg.evaluation[key] is not None:
            run_cfg.evaluation[key] = cfg.evaluation[key]
    run_cfg.visualize = eval_visualize_settings(run_cfg, cfg)
    for key in ("threshold", "threshold_quantile"):  # runs recorded before thresholds existed lack the keys
        if cfg.get(key) is not None:
            run_cfg[key] = cfg[key]
    run_cfg.export = over_run_settings(run_cfg, cfg, "export", ("maps", "dir"))
    apply_overrides(run_cfg, cfg.get("overrides") or {})
    return run_cfg


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def released_loader(cfg: DictConfig) -> type:
    """The method class of `cfg`, checked to load released weights (`load_released_weights`)."""
    from hydra.utils import get_class

    module_class = get_class(cfg.method.module._target_)
    if not callable(getattr(module_class, "load_released_weights", None)):
        raise ConfigError(f"{RELEASED_KEY}: method {cfg.method.name} has no loader for a paper's released weights "
                          "(patch_svdd has: the authors' ckpts/<category>/enchier.pkl)")
    return module_class


def released_record(cfg: DictConfig, path: Path, module_class: type) -> dict[str, Any]:
    """result.json entries of a released-weights evaluation: its budget (label, file, SHA-256, source)."""
    deviations_of = getattr(module_class, "released_weights_deviations", None)
    deviations = list(deviations_of(OmegaConf.to_container(cfg.method, resolve=True))) if deviations_of else []
    budget = {
        "label": RELEASED_OTHER_EVALUATION if deviations else RELEASED_BUDGET,
        "experiment": cfg.get("experiment_name"),
        "weights": {"file": path.name, "sha256": file_sha256(path),
                    "source": getattr(module_class, "released_weights_source", None)},
    }
    if deviations:
        budget["deviations"] = deviations
    return {"budget": budget, "source_weights": run.portable_path(path, cfg)}  # as given: relative stays relative


def evaluate_released(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the released weights in `cfg.weights.released` with the method/data config `cfg`."""
    path = Path(str(OmegaConf.select(cfg, RELEASED_KEY)))
    if not path.is_file():
        raise ConfigError(f"{RELEASED_KEY}={path}: no such file")
    module_class = released_loader(cfg)
    record = released_record(cfg, path, module_class)

    def load(module: Any, weights: Path) -> None:
        module.load_released_weights(weights)

    return run.execute(cfg, hydra_run_dir(), "eval", checkpoint=path, load=load, record=record,
                       reraise=not is_multirun())


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Re-test the model in `cfg.checkpoint` (or evaluate the released weights of `weights.released`) and
    record the result."""
    if OmegaConf.select(cfg, RELEASED_KEY, default=None) is not None:
        return evaluate_released(cfg)
    checkpoint = Path(cfg.checkpoint)
    run_cfg = eval_config(cfg, checkpoint)
    trained = checkpoint.resolve().parent.parent / RESULT_FILE
    budget = json.loads(trained.read_text()).get("budget", {}) if trained.is_file() else {"label": "unknown"}
    source = {"source_checkpoint": run.portable_path(checkpoint.resolve(), run_cfg), "budget": budget}
    return run.execute(run_cfg, hydra_run_dir(), "eval", checkpoint=checkpoint, record=source,
                       reraise=not is_multirun())
