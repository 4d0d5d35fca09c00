"""Recorded configs and paths are portable, and the repository names no machine's folders."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anobench.config import config_dir
from anobench.results.identity import config_hash
from anobench.results.portable import default_paths, portable_command, portable_config, portable_path

REPO = Path(__file__).resolve().parents[1]
MVTEC_ENV = "ANOBENCH_MVTEC_ROOT"


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=False)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A 'machine': its own working directory and MVTec root, nothing from the caller's environment."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("ANOBENCH_RESULTS_DIR", "ANOBENCH_DATA_DIR", MVTEC_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(MVTEC_ENV, str(tmp_path / "machine_a" / "mvtec_ad"))
    return tmp_path


def test_portable_config_resolves_on_another_machine_from_its_environment(machine, monkeypatch):
    cfg = _compose(["data=mvtec/bottle"])
    assert cfg.data.root == str(machine / "machine_a" / "mvtec_ad")
    portable = portable_config(cfg)
    assert portable["paths"] == default_paths()  # unresolved interpolations, as in conf/paths/default.yaml
    assert portable["paths"]["mvtec_root"] == "${oc.env:ANOBENCH_MVTEC_ROOT,null}"
    assert portable["data"]["root"] == "${paths.mvtec_root}"
    assert str(machine) not in json.dumps(portable)
    assert list(portable) == list(OmegaConf.to_container(cfg))  # same keys, same order

    saved = machine / "config.yaml"
    OmegaConf.save(OmegaConf.create(portable), saved)
    as_json = json.loads(json.dumps(portable))  # result.json holds the same dict

    other = machine / "machine_b" / "mvtec"
    monkeypatch.setenv(MVTEC_ENV, str(other))
    for loaded in (OmegaConf.load(saved), OmegaConf.create(as_json)):
        resolved = OmegaConf.to_container(loaded, resolve=True)
        assert resolved["data"]["root"] == str(other)
        assert resolved["paths"]["mvtec_root"] == str(other)
        # everything else is the run's resolved config
        expected = OmegaConf.to_container(cfg, resolve=True)
        for key in ("method", "trainer", "evaluation", "seed"):
            assert resolved[key] == expected[key]


@pytest.mark.parametrize("overrides", [[], ["data=mvtec/bottle"], ["method=uninformed_students"],
                                       ["method=memae", "data=mvtec/bottle", "trainer=gpu"]])
def test_config_hash_of_the_portable_config_is_the_resolved_ones(machine, overrides):
    cfg = _compose(overrides)
    assert config_hash(portable_config(cfg)) == config_hash(OmegaConf.to_container(cfg, resolve=True))



def test_a_path_under_a_root_hashes_the_same_relative_absolute_or_portable(machine):
    """Uninformed Students' teacher cache lives under paths.data_dir: a run with an absolute data dir
    (ANOBENCH_DATA_DIR=/scratch/data) is the same run as one with the default relative one, and the hash of
    its recorded (portable) config is the hash it recorded."""
    relative = _compose(["method=uninformed_students"])
    absolute = _compose(["method=uninformed_students", f"paths.data_dir={machine / 'scratch' / 'data'}"])
    assert absolute.method.module.teacher.cache_dir == str(machine / "scratch" / "data" / "teachers")
    digest = config_hash(OmegaConf.to_container(relative, resolve=True))
    assert config_hash(OmegaConf.to_container(absolute, resolve=True)) == digest
    assert portable_config(absolute)["method"]["module"]["teacher"]["cache_dir"] == "${paths.data_dir}/teachers"
    assert config_hash(portable_config(absolute)) == config_hash(portable_config(relative)) == digest
    # another cache folder is another run
    elsewhere = _compose(["method=uninformed_students", f"method.module.teacher.cache_dir={machine / 'cache'}"])
    assert config_hash(OmegaConf.to_container(elsewhere, resolve=True)) != digest

def test_literal_absolute_roots_become_the_environment_default_or_relative_to_the_working_directory(machine):
    mvtec = machine / "elsewhere" / "mvtec_ad"
    results = Path.cwd() / "out" / "suite"
    cfg = _compose(["data=mvtec/bottle", f"paths.mvtec_root={mvtec}", f"paths.results_dir={results}",
                    "paths.data_dir=data"])
    portable = portable_config(cfg)
    assert portable["paths"] == {"results_dir": "out/suite", "data_dir": "data",
                                 "mvtec_root": "${oc.env:ANOBENCH_MVTEC_ROOT,null}",
                                 **{f"{name}_root": f"${{oc.env:ANOBENCH_{name.upper()}_ROOT,null}}"
                                    for name in ("visa", "btad", "mpdd")}}
    assert portable["data"]["root"] == "${paths.mvtec_root}"
    assert config_hash(portable) == config_hash(OmegaConf.to_container(cfg, resolve=True))


def test_relative_roots_only_where_the_value_really_lies_under_them(machine):
    synthetic = portable_config(_compose(["data=synthetic/washer"]))
    assert synthetic["data"]["root"] == "${paths.data_dir}/synthetic"  # data_dir defaults to "data"
    # "data/synthetic" shares a prefix with "dat" but does not lie under it
    cfg = _compose(["data=synthetic/washer", "paths.data_dir=dat", "data.root=data/synthetic"])
    assert portable_config(cfg)["data"]["root"] == "data/synthetic"
    # a relative value outside the keys that say where data lives stays as written (already portable)
    students = portable_config(_compose(["method=uninformed_students"]))
    assert students["method"]["module"]["teacher"]["cache_dir"] == "data/teachers"


def test_longest_root_wins_and_absolute_values_are_rewritten_anywhere(machine):
    data = machine / "data"
    cfg = _compose(["data=mvtec/bottle", f"paths.data_dir={data}", f"paths.mvtec_root={data / 'mvtec_ad'}",
                    "backbone=resnet18", f"backbone.weights_path={data / 'weights' / 'resnet18.pth'}"])
    portable = portable_config(cfg)
    assert portable["data"]["root"] == "${paths.mvtec_root}"
    assert portable["backbone"]["weights_path"] == "${paths.data_dir}/weights/resnet18.pth"
    assert portable["paths"]["data_dir"] == "${oc.env:ANOBENCH_DATA_DIR,data}"
    assert str(machine) not in json.dumps(portable)


def test_portable_path_and_command(machine):
    cfg = _compose(["data=mvtec/bottle", "paths.results_dir=results/suites/x"])
    run = Path.cwd() / "results" / "suites" / "x" / "runs" / "memae" / "checkpoints" / "last.ckpt"
    assert portable_path(run, cfg) == "${paths.results_dir}/runs/memae/checkpoints/last.ckpt"
    assert portable_path("results/suites/x/runs/a.ckpt", cfg) == "${paths.results_dir}/runs/a.ckpt"
    assert portable_path("/opt/elsewhere/a.ckpt", cfg) == "/opt/elsewhere/a.ckpt"  # under no root: as given
    root = cfg.paths.mvtec_root
    command = f"anobench bench suite=s paths.mvtec_root={root} n_jobs=2 --mvtec-root {root}/bottle"
    assert portable_command(command, cfg) == ("anobench bench suite=s paths.mvtec_root=$ANOBENCH_MVTEC_ROOT n_jobs=2 "
                                              "--mvtec-root $ANOBENCH_MVTEC_ROOT/bottle")
    assert portable_command(None, cfg) is None


# ------------------------------------------------------------------------------ the repository itself

# What only one machine has: a development box's work tree, root's or a user's home, a Windows drive.
MACHINE_PATH = re.compile(r"/work/|/root/|/home/[A-Za-z0-9_.-]+/|/Users/|\b[A-Za-z]:\\")
CHECKED = ["docs", "anobench", "results", "conf", "README.md"]


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", *CHECKED], cwd=REPO, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def test_no_absolute_machine_path_in_docs_code_conf_or_committed_results():
    """report.html files are included: they are rebuilt from result.json, which is portable, so a machine
    path there means the report needs regenerating."""
    offenders = []
    for path in _tracked_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (figures)
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            match = MACHINE_PATH.search(line)
            if match:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}")
                break
    assert not offenders, "absolute machine paths (use a named root or a placeholder):\n" + "\n".join(offenders)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors of a markdown file, plus explicit <a id="..."> ones."""
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', markdown))
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def test_links_into_the_methods_and_performance_docs_name_existing_sections():
    """Code, configs and READMEs cite docs/methods.md and docs/performance.md by section anchor."""
    targets = {name: _anchors((REPO / "docs" / name).read_text(encoding="utf-8"))
               for name in ("methods.md", "performance.md")}
    broken = []
    files = set(_tracked_files()) | set((REPO / "docs").glob("*.md")) | set((REPO / "anobench").rglob("*.md"))
    for path in sorted(files):
        if path.suffix not in (".md", ".py", ".yaml"):
            continue
        text = path.read_text(encoding="utf-8")
        for name, anchor in re.findall(r"(methods|performance)\.md#([\w-]+)", text):
            if anchor not in targets[f"{name}.md"]:
                broken.append(f"{path.relative_to(REPO)}: {name}.md#{anchor}")
    assert not broken, "links to missing sections:\n" + "\n".join(broken)
