"""Every option of every config group composes, resolves, and points at code that exists."""

from __future__ import annotations

import importlib

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anobench.config import GROUPS, config_dir, group_options
from anobench.methods import get_method, list_methods


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


def _import_target(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes_and_resolves(group, option):
    cfg = _compose([f"{group}={option}"])
    container = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert container["method"]["name"]
    if group == "data":
        # data=folder (your own dataset) has no category configs: its category is the root folder's name
        expected = "folder/custom" if option == "folder" else option
        assert f"{container['data']['dataset']}/{container['data']['category']}" == expected
        assert _import_target(container["data"]["_target_"])
    if group == "method":
        cls = _import_target(container["method"]["module"]["_target_"])
        assert get_method(option) is cls, "method yaml name and registered class disagree"


def test_every_registered_method_has_a_config():
    assert set(list_methods()) == set(group_options("method"))


def test_default_is_patch_svdd_on_synthetic_cpu():
    cfg = _compose([])
    assert cfg.method.name == "patch_svdd"
    assert cfg.data.dataset == "synthetic"
    assert cfg.trainer.name == "cpu" and cfg.trainer.accelerator == "cpu"


def test_all_fifteen_mvtec_categories_have_configs_and_sweep():
    from anobench.data import MVTEC_CATEGORIES

    assert {f"mvtec/{c}" for c in MVTEC_CATEGORIES} == {o for o in group_options("data") if o.startswith("mvtec/")}
    sweep = OmegaConf.load(config_dir() / "sweep" / "mvtec.yaml")
    assert sorted(sweep.hydra.sweeper.params.data.split(",")) == sorted(f"mvtec/{c}" for c in MVTEC_CATEGORIES)


def test_synthetic_sweep_lists_every_synthetic_category():
    from anobench.data import SYNTHETIC_CATEGORIES

    sweep = OmegaConf.load(config_dir() / "sweep" / "synthetic.yaml")
    assert sorted(sweep.hydra.sweeper.params.data.split(",")) == sorted(f"synthetic/{c}" for c in SYNTHETIC_CATEGORIES)
    assert {f"synthetic/{c}" for c in SYNTHETIC_CATEGORIES} == {o for o in group_options("data") if o.startswith("synthetic/")}


def test_paper_experiment_sets_the_paper_budget():
    cfg = _compose(["experiment=patch_svdd_paper"])
    assert cfg.budget_label == "paper"
    assert cfg.trainer.max_epochs == 300
    assert cfg.method.input.image_size == 256 and cfg.method.input.batch_size == 64
    assert cfg.method.module.embedding_dim == 64 and cfg.method.module.optimizer.lr == pytest.approx(1e-4)


def test_smoke_trainer_is_tiny():
    cfg = _compose(["trainer=smoke"])
    assert 0 < cfg.trainer.max_steps <= 5


def test_optimizer_is_a_partial():
    from hydra.utils import instantiate

    factory = instantiate(_compose([]).method.module.optimizer)
    import torch

    optimizer = factory([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(optimizer, torch.optim.Adam)


def test_the_record_states_the_thread_count_the_run_computes_with():
    """torch_threads is applied before the record is made: the first job of an in-process sweep used to
    record the process's previous count (2) while computing with the configured one (1)."""
    import torch

    from anobench.tasks.run import start_record

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        record = start_record(_compose(["torch_threads=1"]), "train")
        assert record["device"]["torch_threads"] == 1 == torch.get_num_threads()
        assert record["config"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)
