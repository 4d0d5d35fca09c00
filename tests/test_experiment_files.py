"""conf/experiment/*.yaml override only what differs from the method card and the other defaults.

An experiment file that repeats a default says nothing and goes stale silently when the card changes, so
every value it sets (and every config-group choice it makes besides its method) must change the composed
config: compared with `method=<its method>` alone, after resolving interpolations.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anobench.config import config_dir, group_options

EXPERIMENTS = group_options("experiment")


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


def _leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; a list or an empty mapping is one leaf."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _resolved(cfg, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default="<absent>")
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _unresolved(cfg, key: str) -> Any:
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def _experiment_file(name: str) -> tuple[dict[str, str], dict]:
    raw = yaml.safe_load((config_dir() / "experiment" / f"{name}.yaml").read_text(encoding="utf-8"))
    choices: dict[str, str] = {}
    for entry in raw.get("defaults") or []:
        (key, option), = entry.items()
        choices[key.removeprefix("override").strip().lstrip("/").split("@")[0]] = option
    return choices, {k: v for k, v in raw.items() if k != "defaults"}


def repeated_settings(base, experiment, choices: dict[str, str], body: dict) -> list[str]:
    """What an experiment sets that `base` (the config without it) already has, after resolving.

    An interpolation the base does not have (e.g. ``${oc.env:...}``) is a difference even where it
    happens to resolve to the base's value in this environment.
    """
    repeated = [f"defaults: override /{group}: {option}" for group, option in choices.items()
                if _resolved(base, group) == _resolved(experiment, group)]
    for key, value in _leaves(body):
        if _resolved(base, key) != _resolved(experiment, key):
            continue
        if isinstance(value, str) and "${" in value and value != _unresolved(base, key):
            continue
        repeated.append(f"{key}: {value!r}")
    return repeated


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_overrides_only_what_differs_from_the_method_card(name):
    choices, body = _experiment_file(name)
    method = choices.pop("method", None)
    assert method, f"experiment/{name}.yaml must pick its method (`- override /method: <name>`)"
    base = _compose([f"method={method}"])
    experiment = _compose([f"experiment={name}"])
    assert experiment.method.name == method
    repeated = repeated_settings(base, experiment, choices, body)
    assert not repeated, (f"experiment/{name}.yaml repeats what the composed default already gives "
                          f"(method={method}); remove: {repeated}")


def test_a_repeated_default_is_caught():
    """The comparison itself: a card value, a card list, a default group choice are flagged; a changed value,
    and an env interpolation resolving to the card's null, are not."""
    base = _compose(["method=uninformed_students"])
    env_folder = "${oc.env:ANOBENCH_NO_SUCH_VAR,null}"
    body = {"method": {"input": {"image_size": 128, "batch_size": 2},
                       "module": {"patch_sizes": [33], "teacher": {"image_folder": env_folder}}}}
    experiment = _compose(["method=uninformed_students", "method.input.batch_size=2",
                           f"method.module.teacher.image_folder={env_folder}"])
    repeated = repeated_settings(base, experiment, {"backbone": "efficientnet_lite0"}, body)
    assert repeated == ["defaults: override /backbone: efficientnet_lite0",
                        "method.input.image_size: 128", "method.module.patch_sizes: [33]"]
