"""The Patch SVDD authors' released encoders (anobench/methods/patch_svdd/released.py) and `anobench eval ...
weights.released=`.

The authors' state dict is built here with their key names and shapes (their codes/networks.py: EncoderHier(K=64,
D=64) holding EncoderDeep as `enc`); the real file is only read by the real-data test at the end, which is
skipped unless both the bottle category and the released bottle file are present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anobench.cli import config_name_for
from anobench.config import config_dir
from anobench.errors import ConfigError
from anobench.methods.patch_svdd import EncoderHier, PatchSVDD
from anobench.methods.patch_svdd.released import (
    load_released_encoder,
    paper_evaluation_deviations,
    released_encoder_state,
    released_key_map,
)
from anobench.results.leaderboard import build_leaderboard, collect_results
from anobench.results.record import write_result
from anobench.results.render import RELEASED_BUDGET, RELEASED_MARK, cell_text, to_markdown
from anobench.results.reproduce import NOT_PAPER_BUDGET, OK, OUTSIDE, RELEASED_NOTE, check_reproduction
from anobench.tasks.evaluate import evaluate_released
from conftest import REPO, mvtec_root

# The authors' EncoderDeep (K = 32): conv<i> = Conv2d(in, out, 3); then EncoderHier's head.
_DEEP = [(3, 32), (32, 64), (64, 128), (128, 128), (128, 64), (64, 32), (32, 32), (32, 64)]


def authors_state_dict(seed: int = 0, D: int = 64) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of the authors' EncoderHier(K=64, D) (random values)."""
    g = torch.Generator().manual_seed(seed)
    widths = [*_DEEP[:-1], (32, D)]
    state = {}
    for i, (cin, cout) in enumerate(widths, start=1):
        state[f"enc.conv{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.2
        state[f"enc.conv{i}.bias"] = torch.randn(cout, generator=g) * 0.05
    state["conv1.weight"] = torch.randn(128, D, 2, 2, generator=g) * 0.2
    state["conv1.bias"] = torch.randn(128, generator=g) * 0.05
    state["conv2.weight"] = torch.randn(D, 128, 1, 1, generator=g) * 0.2
    state["conv2.bias"] = torch.randn(D, generator=g) * 0.05
    return state


def authors_deep(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The authors' EncoderDeep.forward (their K = 32 encoder, `enc`) written against their state dict."""
    h = x
    for i in range(1, 9):
        h = F.conv2d(h, state[f"enc.conv{i}.weight"], state[f"enc.conv{i}.bias"], stride=2 if i == 1 else 1)
        h = torch.tanh(h) if i == 8 else F.leaky_relu(h, 0.1)
    return h


def authors_hier(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The authors' EncoderHier(64).forward (forward_hier, then the head) written against their state dict."""
    n = x.shape[0]
    hh = authors_deep(state, torch.cat([x[..., :32, :32], x[..., :32, 32:], x[..., 32:, :32], x[..., 32:, 32:]]))
    h1, h2, h3, h4 = hh[:n], hh[n:2 * n], hh[2 * n:3 * n], hh[3 * n:]
    h = torch.cat([torch.cat([h1, h2], dim=3), torch.cat([h3, h4], dim=3)], dim=2)
    h = F.leaky_relu(F.conv2d(h, state["conv1.weight"], state["conv1.bias"]), 0.1)
    return torch.tanh(F.conv2d(h, state["conv2.weight"], state["conv2.bias"]))


def test_key_map_covers_every_parameter_of_our_encoder_once():
    mapping = released_key_map()
    assert sorted(mapping.values()) == sorted(EncoderHier(64).state_dict())
    assert set(mapping) == set(authors_state_dict())


def test_authors_state_dict_loads_and_computes_their_embeddings(tmp_path):
    state = authors_state_dict()
    path = tmp_path / "enchier.pkl"
    torch.save(state, path)
    encoder = EncoderHier(64)
    load_released_encoder(encoder, path)
    for theirs, ours in released_key_map().items():
        assert torch.equal(encoder.state_dict()[ours], state[theirs]), theirs
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), authors_hier(state, x), rtol=1e-5, atol=1e-6)
        # K = 32: their evaluation embeds 32×32 patches with `enc.enc`, ours with the same inner encoder
        torch.testing.assert_close(encoder.enc(x[..., 16:48, 8:40]), authors_deep(state, x[..., 16:48, 8:40]),
                                   rtol=1e-5, atol=1e-6)


def test_wrong_or_partial_file_is_one_error_naming_every_problem(tmp_path):
    state = authors_state_dict()
    del state["enc.conv3.bias"], state["conv2.weight"]
    state["enc.conv9.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(128, 32, 2, 2)  # D = 32 head on a D = 64 encoder
    path = tmp_path / "partial.pkl"
    torch.save(state, path)
    with pytest.raises(ConfigError) as error:
        load_released_encoder(EncoderHier(64), path)
    message = str(error.value)
    assert f"weights.released={path}" in message
    assert "missing keys: enc.conv3.bias, conv2.weight" in message
    assert "unexpected keys: enc.conv9.weight" in message
    assert "conv1.weight: file 128×32×2×2, expected 128×64×2×2" in message


def test_a_file_that_is_not_a_state_dict_is_a_clear_error(tmp_path):
    encoder = EncoderHier(64)
    cases = {
        "tensor.pkl": (torch.zeros(3), "got a Tensor"),
        "list.pkl": ([torch.zeros(3)], "got a list"),
        "lightning.ckpt": ({"state_dict": {"model.encoder.conv1.weight": torch.zeros(1)}, "epoch": 1},
                           "anobench eval checkpoint="),
    }
    for name, (obj, expected) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ConfigError, match=expected):
            load_released_encoder(encoder, tmp_path / name)
    (tmp_path / "junk.pkl").write_bytes(b"not a torch file at all")
    with pytest.raises(ConfigError, match="not a torch.save file of tensors"):
        load_released_encoder(encoder, tmp_path / "junk.pkl")
    with pytest.raises(ConfigError, match="no such file"):
        load_released_encoder(encoder, tmp_path / "absent.pkl")
    with pytest.raises(ConfigError, match="expected a torch.save"):
        released_encoder_state({1: torch.zeros(1)}, encoder)


def _method_cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="eval_released", overrides=["method=patch_svdd", "data=mvtec/bottle",
                                                               "weights.released=x.pkl", *overrides])
    return OmegaConf.to_container(cfg.method, resolve=True)


def test_method_card_is_the_papers_evaluation_and_changes_are_named():
    assert paper_evaluation_deviations(_method_cfg()) == []
    assert PatchSVDD.released_weights_deviations(_method_cfg("method.module.nn_search=torch")) == []
    assert paper_evaluation_deviations(_method_cfg("method.module.bank_subsample=0.1",
                                                   "method.input.image_size=128")) == [
        "method.input.image_size=128 (paper: 256)", "method.module.bank_subsample=0.1 (paper: None)"]


def test_eval_released_composes_the_train_config_of_method_and_data():
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="eval_released", overrides=[
            "method=patch_svdd", "data=mvtec/cable", "weights.released=ckpts/cable/enchier.pkl"])
    assert (cfg.task, cfg.data.category, cfg.weights.released) == ("eval", "cable", "ckpts/cable/enchier.pkl")
    assert cfg.method.input.image_size == 256 and cfg.trainer.name == "cpu"


TINY_DATA = ["data=synthetic/washer", "data.synthetic.n_train=4", "data.synthetic.n_test_good=2",
             "data.synthetic.n_test_per_defect=1", "method.input.eval_batch_size=4", "visualize.enabled=false"]


def test_eval_from_released_weights_records_budget_file_and_sha256(tmp_path, run_cli):
    path = tmp_path / "enchier.pkl"
    torch.save(authors_state_dict(), path)
    run_cli("eval", "method=patch_svdd", "weights.released=enchier.pkl", *TINY_DATA)
    [result] = (tmp_path / "results" / "runs").glob("patch_svdd/synthetic/washer/released/*/result.json")
    record = json.loads(result.read_text())
    import hashlib

    assert record["status"] == "ok" and record["task"] == "eval"
    assert record["budget"]["label"] == RELEASED_BUDGET
    assert record["budget"]["weights"]["file"] == "enchier.pkl"
    assert record["budget"]["weights"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["source_weights"] == "enchier.pkl"
    assert "checkpoint" not in record  # nothing was trained or saved
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert f"{RELEASED_MARK} = the paper authors' released weights" in board
    assert f"{RELEASED_MARK} |" in board and "† |" not in board


def test_eval_released_refuses_a_method_without_a_loader_and_a_missing_file(tmp_path):
    torch.save(authors_state_dict(), tmp_path / "enchier.pkl")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        memae = compose(config_name="eval_released", overrides=[
            "method=memae", f"weights.released={tmp_path / 'enchier.pkl'}", *TINY_DATA])
        absent = compose(config_name="eval_released", overrides=[
            "method=patch_svdd", f"weights.released={tmp_path / 'none.pkl'}", *TINY_DATA])
    with pytest.raises(ConfigError, match="weights.released: method memae has no loader for a paper's released"):
        evaluate_released(memae)
    with pytest.raises(ConfigError, match="none.pkl: no such file"):
        evaluate_released(absent)
    assert config_name_for("eval", ["method=patch_svdd", "weights.released=x.pkl"]) == "eval_released"
    assert config_name_for("eval", ["checkpoint=run/checkpoints/last.ckpt"]) == "eval"


def _write(root: Path, name: str, category: str, metrics: dict, label: str, seed: int = 0) -> None:
    write_result(root / "runs" / name, {"method": "patch_svdd", "dataset": "mvtec", "category": category,
                                        "seed": seed, "status": "ok", "finished_at": "2026-01-01T00:00:00",
                                        "budget": {"label": label}, "metrics": {"pro": 0.5, **metrics}})


def test_released_rows_are_marked_and_compared_with_the_paper_never_as_training(tmp_path):
    paper = {"patch_svdd": {"tolerance": {"image_auroc": 0.02, "pixel_auroc": 0.02},
                            "mvtec": {"bottle": {"image_auroc": 0.986, "pixel_auroc": 0.981}}}}
    _write(tmp_path, "released", "bottle", {"image_auroc": 0.99, "pixel_auroc": 0.95}, RELEASED_BUDGET)
    board = build_leaderboard(collect_results(tmp_path)[0], paper=paper)
    [row] = [r for r in board.rows if r["category"] == "bottle"]
    assert cell_text(row[("patch_svdd", "image_auroc")]) == f"0.990{RELEASED_MARK}"
    assert "not a reproduction of training" in to_markdown(board, "runs")
    report = check_reproduction(tmp_path, paper=paper)
    rows = {r.metric: r for r in report.rows if r.category == "bottle"}
    assert rows["image_auroc"].status == OK and RELEASED_NOTE in rows["image_auroc"].note
    assert rows["pixel_auroc"].status == OUTSIDE  # 0.95 vs 0.981 ± 0.02
    # released weights evaluated otherwise than the paper: † and not compared
    other = tmp_path / "other"
    _write(other, "released", "bottle", {"image_auroc": 0.99, "pixel_auroc": 0.98},
           "released weights (not the paper's evaluation)")
    report = check_reproduction(other, paper=paper)
    assert {r.status for r in report.rows if r.category == "bottle" and r.metric != "pro"} == {NOT_PAPER_BUDGET}


# --- real data: the authors' released bottle encoder against the paper's numbers ----------------------------
RELEASED_ENV = "ANOBENCH_PATCH_SVDD_RELEASED"  # a folder holding <category>/enchier.pkl


def released_file(category: str) -> Path | None:
    """The authors' released encoder of `category`: $ANOBENCH_PATCH_SVDD_RELEASED/<category>/enchier.pkl, else
    ../shared/patch_svdd_released/<category>/enchier.pkl beside the repo."""
    for folder in (os.environ.get(RELEASED_ENV), REPO.parent / "shared" / "patch_svdd_released"):
        if folder and (Path(folder) / category / "enchier.pkl").is_file():
            return Path(folder) / category / "enchier.pkl"
    return None


def _anobench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m anobench ...` with results under tmp_path (a bottle eval takes a few minutes on 2 CPU cores)."""
    env = {**os.environ, "ANOBENCH_RESULTS_DIR": str(tmp_path / "results"), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "anobench", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=3600)


@pytest.mark.real_data
@pytest.mark.slow
def test_released_bottle_weights_reproduce_the_paper_numbers(tmp_path):
    """`anobench eval` from the authors' released bottle encoder, then `anobench reproduce --check --category
    bottle` on its result (paper_numbers.yaml's tolerances: ±0.04 image, ±0.03 pixel AUROC). The eval itself is
    held to the issue's 2 points of the paper's 0.986 / 0.981; measured 0.987 / 0.981 at ground-truth
    resolution (Patch SVDD README "Released weights"; ~3.5 min on 2 CPU cores)."""
    root, weights = mvtec_root(), released_file("bottle")
    if root is None or weights is None:
        pytest.skip(f"needs MVTec AD bottle (ANOBENCH_MVTEC_ROOT or ../shared/mvtec_ad) and the authors' released "
                    f"bottle encoder ({RELEASED_ENV}/bottle/enchier.pkl or ../shared/patch_svdd_released)")
    evaluated = _anobench(tmp_path, "eval", "method=patch_svdd", "data=mvtec/bottle", f"data.root={root}",
                          f"weights.released={weights}", "visualize.enabled=false")
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    [result] = (tmp_path / "results" / "runs").glob("patch_svdd/mvtec/bottle/released/*/result.json")
    record = json.loads(result.read_text())
    assert record["budget"]["label"] == RELEASED_BUDGET and record["budget"]["weights"]["file"] == "enchier.pkl"
    metrics = record["metrics"]
    assert abs(metrics["image_auroc"] - 0.986) <= 0.02, metrics
    assert abs(metrics["pixel_auroc"] - 0.981) <= 0.02, metrics
    check = _anobench(tmp_path, "reproduce", "--check", str(tmp_path / "results"), "--category", "bottle")
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert "reproduction check passed" in check.stdout
