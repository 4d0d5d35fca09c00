"""The wheel ships conf/ as anobench/conf, and an installed anobench composes its configs from there."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

from tests.conftest import REPO


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "anobench").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_wheel_contains_configs_and_composes_outside_the_source_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("anobench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    repo_configs = {f"anobench/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert repo_configs <= names, sorted(repo_configs - names)
    assert "anobench/results/paper_numbers.yaml" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "from hydra import compose, initialize_config_dir\n"
        "from anobench.config import config_dir\n"
        "import anobench\n"
        "with initialize_config_dir(config_dir=str(config_dir()), version_base='1.3'):\n"
        "    cfg = compose(config_name='train', overrides=['data=mvtec/bottle'])\n"
        "print(anobench.__file__)\nprint(config_dir())\nprint(cfg.data.category)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == str(site / "anobench" / "conf") and out[2] == "bottle"
