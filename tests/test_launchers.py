"""Suites on Hydra's launcher plugins: the SLURM preset composes with each method's resources, and
submitit's local executor (the SLURM launcher's code path, minus sbatch) runs a 2-job suite end to end."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from anobench.config import config_dir, group_options
from anobench.errors import AnobenchError
from anobench.tasks import bench, launch
from anobench.tasks import plan as planning
from tests.test_suite import TINY_OVERRIDES, TINY_SUITE

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'anobench[slurm]'")


def _compose_with_launcher(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_states_the_resources_a_scheduler_grants_it(method):
    cfg = _compose_with_launcher([f"method={method}"])
    resources = cfg.method.resources
    assert set(resources) == set(launch.RESOURCE_KEYS)
    assert resources.timeout_min >= 30 and resources.gpus_per_node == 1 and resources.mem_gb >= 8


def test_slurm_launcher_config_composes_and_each_method_gets_its_own_array(tmp_path):
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab"]
    cfg = _compose_with_launcher(overrides)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.partition == "gpu"

    suite = planning.load_suite("mvtec_paper", ["methods=[memae,uninformed_students]", "categories=[mvtec/bottle,mvtec/grid]"])
    todo = planning.plan(planning.expand(suite), tmp_path / "suites" / "mvtec_paper", clean=False)
    groups = launch.resource_groups(todo, overrides)
    by_method = {todo[indices[0]].job.method: (resources, [todo[i].job.method for i in indices])
                 for resources, indices in groups.items()}
    assert set(by_method) == {"memae", "uninformed_students"}
    memae, students = by_method["memae"], by_method["uninformed_students"]
    assert memae[1] == ["memae", "memae"] and students[1] == ["uninformed_students"] * 2
    assert "hydra.launcher.timeout_min=60" in memae[0] and "hydra.launcher.timeout_min=480" in students[0]

    # A key set on the command line wins over every method's value, so both methods share one array.
    shared = launch.resource_groups(todo, [*overrides, "hydra.launcher.timeout_min=5", "hydra.launcher.mem_gb=8"])
    assert len(shared) == 1 and not any("timeout_min" in o or "mem_gb" in o for o in next(iter(shared)))

    # The group's config instantiates the plugin's SLURM launcher with the method's request.
    cfg = _compose_with_launcher([*overrides, *students[0]])
    from hydra.utils import instantiate

    launcher = instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, SlurmLauncher)
    assert launcher.params["timeout_min"] == 480 and launcher.params["gpus_per_node"] == 1
    assert launcher.params["partition"] == "gpu" and launcher.params["account"] == "lab"


def test_n_jobs_and_an_explicit_launcher_are_one_or_the_other():
    assert launch.launcher_overrides([], 3) == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"]
    assert launch.launcher_overrides(["hydra/launcher=submitit_local"], 1) == ["hydra/launcher=submitit_local"]
    with pytest.raises(AnobenchError, match="n_jobs=N .* or hydra/launcher"):
        launch.launcher_overrides(["hydra/launcher=submitit_local"], 2)


def test_an_unknown_launcher_is_one_clear_error(tmp_path):
    suite = planning.load_suite("method", TINY_SUITE[1:3] + ["seeds=[0]", "categories=[synthetic/weave]", TINY_OVERRIDES])
    with pytest.raises(AnobenchError, match="hydra/launcher=slurmm"):
        bench.run_suite(suite, tmp_path / "results", launcher=["hydra/launcher=slurmm"])
    assert not list((tmp_path / "results").glob("**/result.json"))


@pytest.mark.slow
def test_submitit_local_executor_runs_a_two_job_suite_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    suite = planning.load_suite("method", TINY_SUITE[1:3] + ["seeds=[0]", TINY_SUITE[4], TINY_OVERRIDES])
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.gpus_per_node=0"]
    outcome = bench.run_suite(suite, tmp_path / "results", launcher=launcher)

    assert sorted((p.category, r["status"]) for p, r in outcome.ran) == [("tablet", "ok"), ("weave", "ok")]
    # Each job ran as its own submitit job (a pickled job, its stdout and its result), in the planned folder.
    submitted = sorted((outcome.suite_dir / ".submitit").glob("*/*_result.pkl"))
    assert len(submitted) == 2
    for item, record in outcome.ran:
        stored = json.loads((item.run_dir / "result.json").read_text())
        assert stored == record and stored["config_hash"] == item.config_hash
        assert (item.run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (outcome.suite_dir / "leaderboard.csv").is_file()

    again = bench.run_suite(suite, tmp_path / "results", launcher=launcher)
    assert len(again.skipped) == 2 and not again.ran
    assert len(list((outcome.suite_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # nothing resubmitted
