"""Precision: Patch SVDD's strict float32 sections, what result.json records, GradCon under a grad scaler,
the anomaly-map dtype of every method under bf16-mixed, what a CUDA bank's search record says, and the
Lightning floor (issue 31, items 8-10)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from anobench.config import config_dir
from anobench.methods import get_method, list_methods
from anobench.precision import float32_settings, strict_float32

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "methods"))
from fitting import quiet_trainer, synthetic_datamodule, tiny_overrides  # noqa: E402


# --- strict float32 ----------------------------------------------------------------------------
def _tf32_off() -> bool:
    """Whether float32 matmuls and convolutions run in full float32 right now (either torch API)."""
    settings = float32_settings()
    backends = settings.get("fp32_precision")
    if backends:
        return all(value == "ieee" for value in backends.values())
    return (settings["matmul_precision"] == "highest" and not settings["cuda_matmul_allow_tf32"]
            and not settings["cudnn_allow_tf32"])


@pytest.fixture
def restore_precision():
    """Leave the process's float32 switches as the test found them."""
    legacy = torch.get_float32_matmul_precision()
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(legacy)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_strict_float32_turns_tf32_off_inside_and_restores_after(restore_precision):
    torch.set_float32_matmul_precision("high")  # what a user sets for speed: TF32 matmuls
    before = float32_settings()
    assert before["matmul_precision"] == "high" and not _tf32_off()
    with strict_float32():
        assert _tf32_off()
        with strict_float32():  # nested sections (forward calls patch_scores)
            assert _tf32_off()
        assert _tf32_off()
    assert float32_settings() == before
    with pytest.raises(RuntimeError), strict_float32():  # restored on an error too
        raise RuntimeError("boom")
    assert float32_settings() == before


def test_patch_svdd_inference_runs_with_tf32_off(restore_precision):
    from anobench.methods.patch_svdd.torch_model import PatchSVDDModel

    torch.set_float32_matmul_precision("high")
    before = float32_settings()
    model = PatchSVDDModel(embedding_dim=8).eval()
    seen: list[bool] = []
    model.encoder.enc.convs[0].register_forward_hook(lambda *_: seen.append(_tf32_off()))
    images = torch.rand(2, 3, 64, 64)
    model.fit_mean([images])
    model.fit_bank([images])
    model(images)
    assert seen and all(seen), seen  # the bank and the test patches were embedded with TF32 off
    assert float32_settings() == before


def test_result_record_holds_the_float32_precision(tmp_path):
    from anobench.tasks.run import start_record

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*tiny_overrides("memae"), "data=synthetic/washer",
                                                      f"paths.data_dir={tmp_path}", f"paths.results_dir={tmp_path}"])
    record = start_record(cfg, "train")
    assert record["float32_precision"] == float32_settings()
    assert set(record["float32_precision"]) >= {"matmul_precision", "cuda_matmul_allow_tf32", "cudnn_allow_tf32"}


# --- Patch SVDD's search record ------------------------------------------------------------------
@pytest.mark.parametrize("search", ["ivf", "hnsw", "exact"])
def test_cuda_bank_record_says_the_exact_torch_search_ran(search):
    from anobench.methods.patch_svdd.nearest import NearestNeighbourSettings

    record = NearestNeighbourSettings(search=search).as_record(bank_rows={"k64": 4, "k32": 8}, on_cuda=True)
    assert record["search"] == "torch" and record["library"] == "torch" and record["approximate"] is False
    assert record["requested_search"] == search
    assert not {"nlist", "nprobe", "hnsw_m", "ef_search"} & set(record)  # ivf/hnsw settings did not apply
    on_cpu = NearestNeighbourSettings(search=search).as_record(bank_rows={"k64": 4, "k32": 8}, on_cuda=False)
    assert on_cpu["search"] == search and on_cpu["approximate"] is (search != "exact")
    assert "requested_search" not in on_cpu


# --- GradCon under a grad scaler -----------------------------------------------------------------
def test_gradcon_reference_skips_a_non_finite_step():
    from anobench.methods.gradcon import GradConModel

    model = GradConModel(channels=(4, 4, 8, 8))
    shapes = [w.shape for w in model.constrained_weights()]
    model.update_reference([torch.full(s, 2.0) for s in shapes])
    poisoned = [torch.full(s, 1.0) for s in shapes]
    poisoned[1][0, 0, 0, 0] = float("inf")
    model.update_reference(poisoned)
    model.update_reference([torch.full(s, 2.0) for s in shapes[:1]] + [torch.full(s, float("nan")) for s in shapes[1:]])
    assert model.reference_count.item() == 1
    model.update_reference([torch.full(s, 4.0) for s in shapes])
    assert model.reference_count.item() == 2
    for ref in model.reference_gradients():
        torch.testing.assert_close(ref, torch.full_like(ref, 3.0))


class _OverflowOnce(L.Callback):
    """Makes step 1's gradient inf (as a 16-mixed overflow does) and records the unscaled gradients."""

    def __init__(self) -> None:
        self.unscaled: list[list[torch.Tensor]] = []

    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == 1:
            module.model.constrained_weights()[0].grad[0, 0, 0, 0] = float("inf")

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        self.unscaled.append([w.grad.detach().clone() for w in module.model.constrained_weights()])


def test_gradcon_folds_unscaled_finite_gradients_under_16_mixed(tmp_path):
    """A real grad scaler (16-mixed, on CPU): the reference is the mean of the unscaled finite steps' gradients."""
    from lightning.pytorch.plugins import MixedPrecision

    from anobench.methods.gradcon import GradCon

    L.seed_everything(0, verbose=False)
    datamodule = synthetic_datamodule(tmp_path, "washer", image_size=32, batch_size=4, eval_batch_size=4,
                                      train_repeats=1, synthetic=dict(n_train=8, n_test_good=2, n_test_per_defect=1))
    module = GradCon(channels=(8, 8, 16, 16))
    recorder = _OverflowOnce()
    trainer = quiet_trainer(3, callbacks=[recorder], deterministic=None, plugins=[MixedPrecision("16-mixed", "cpu")])
    trainer.fit(module, datamodule=datamodule)
    finite = [grads for grads in recorder.unscaled if all(torch.isfinite(g).all() for g in grads)]
    assert 1 <= len(finite) < len(recorder.unscaled)  # step 0 is finite, step 1 overflowed
    assert module.model.reference_count.item() == len(finite)
    for i, ref in enumerate(module.model.reference_gradients()):
        assert torch.isfinite(ref).all()
        torch.testing.assert_close(ref, torch.stack([g[i] for g in finite]).mean(0), atol=1e-9, rtol=1e-4)


# --- the anomaly map under bf16-mixed, every method ------------------------------------------------
# What each method's model returns under trainer.precision=bf16-mixed (autocast wraps every test_step; Patch
# SVDD turns it off): the test loop keeps float32 copies (AnomalyOutput.on_cpu). docs/performance.md#precision.
MAP_DTYPE_BF16 = {"gradcon": torch.float32, "memae": torch.float32, "mnad": torch.float32, "nbs": torch.bfloat16,
                  "ognet": torch.bfloat16, "patch_svdd": torch.float32, "synthcp": torch.bfloat16,
                  "uninformed_students": torch.float32}
# tiny inputs: 64 px (Uninformed Students with a 17 px student); only the methods whose inference reads state
# that the fit hooks set up are fitted first (2 steps in float32: the test step's precision is what is tested)
SIZE = {"uninformed_students": ["method.module.patch_sizes=[17]"]}
NEEDS_FIT = {"nbs", "synthcp", "uninformed_students"}


@pytest.mark.parametrize("name", list_methods())
def test_anomaly_map_dtype_under_bf16_mixed(name, tmp_path):
    from anobench.tasks import run

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            *tiny_overrides(name), "data=synthetic/washer", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.results_dir={tmp_path / 'results'}", "method.input.image_size=64", *SIZE.get(name, [])])
    built = run.build(cfg)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)
    if name in NEEDS_FIT:
        run.build_trainer(cfg.trainer, tmp_path / "run", **quiet).fit(built.module, datamodule=built.datamodule)
    trainer = run.build_trainer(cfg.trainer, tmp_path / "run", precision="bf16-mixed", **quiet)
    layer_dtypes: set[torch.dtype] = set()
    maps: list[torch.Tensor] = []
    for layer in built.module.model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            layer.register_forward_hook(lambda _m, _i, out: layer_dtypes.add(out.dtype))
    built.module.model.register_forward_hook(lambda _m, _i, out: maps.append(out.anomaly_map))
    outcome = run.evaluate_on_test_set(built.module, built.datamodule, run.EvaluationSettings.from_config(cfg), trainer)
    assert maps and {m.dtype for m in maps} == {MAP_DTYPE_BF16[name]}, (name, {m.dtype for m in maps})
    # inference in the training precision (bf16 layers) for every method but Patch SVDD (float32, tested above)
    assert (torch.bfloat16 in layer_dtypes) is (get_method(name).inference_precision == "training"), layer_dtypes
    assert all(m.dtype == "float32" for m in outcome.maps)  # what evaluation sees


# --- the Lightning floor ---------------------------------------------------------------------------
def test_lightning_floor_is_checked_and_matches_pyproject(monkeypatch):
    import lightning

    from anobench.compat import LIGHTNING_FLOOR, check_lightning_version

    floor = re.search(r'"lightning>=([0-9.]+),', (REPO / "pyproject.toml").read_text()).group(1)
    assert floor == LIGHTNING_FLOOR == "2.5.2"  # the first Lightning with LightningModule.toggled_optimizer
    assert hasattr(lightning.LightningModule, "toggled_optimizer")
    check_lightning_version()  # the installed one passes
    monkeypatch.setattr(lightning, "__version__", "2.4.0")
    with pytest.raises(ImportError, match=r"lightning>=2\.5\.2.*lightning 2\.4\.0 is installed"):
        check_lightning_version()


def test_importing_the_methods_with_an_old_lightning_fails_clearly():
    code = "import lightning; lightning.__version__ = '2.2.0'; import anobench.methods"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0
    assert "ImportError: anobench needs lightning>=2.5.2" in proc.stderr and "lightning 2.2.0 is installed" in proc.stderr
