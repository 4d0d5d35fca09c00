"""OGNet: schedule, G_old snapshot, phase two (G frozen, D on four labelled kinds), GAN plumbing, learning."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from anobench.errors import ConfigError
from anobench.methods import get_method
from anobench.methods.base import AnomalyOutput
from anobench.methods.components.gan import (
    adversarial_loss,
    alternating_role,
    build_discriminator,
    discriminator_loss,
    frozen_copy,
    generator_loss,
)
from anobench.methods.components.scoring import gaussian_blur
from anobench.methods.ognet import OGNet, OGNetModel, resolve_schedule
from fitting import SMALL_SYNTHETIC, fit_and_test, quiet_trainer, synthetic_datamodule

_SMALL = dict(generator_channels=(8, 16, 16, 32), discriminator_channels=(8, 16, 16, 32))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _datamodule(tmp_path, category: str = "washer", seed: int = 0, batch: int = 8, size: int = 64,
                n_train: int = 12):
    return synthetic_datamodule(tmp_path, category, image_size=size, batch_size=batch, eval_batch_size=16,
                                train_repeats=max(1, 600 // n_train), seed=seed,
                                synthetic={**SMALL_SYNTHETIC, "n_train": n_train})


# --- GAN plumbing (components/gan.py) -------------------------------------------------------------
def test_discriminator_heads_and_losses():
    linear = build_discriminator(3, (8, 16), head="linear", input_size=64, kernel_size=5)
    patch = build_discriminator(5, (8, 16), head="patch", kernel_size=4, norm="instance")
    assert linear(torch.rand(4, 3, 64, 64)).shape == (4,)
    assert patch(torch.rand(4, 5, 64, 64)).shape == (4, 1, 15, 15)  # PatchGAN: k=4 stride-1 head
    with pytest.raises(ValueError, match="input_size"):
        build_discriminator(3, (8,), head="linear")
    logits = torch.tensor([2.0, -1.0])
    torch.testing.assert_close(adversarial_loss(logits, 1.0), F.binary_cross_entropy_with_logits(logits, torch.ones(2)))
    torch.testing.assert_close(adversarial_loss(logits, 0.0, "hinge"), F.relu(1 + logits).mean())
    torch.testing.assert_close(discriminator_loss(logits, -logits, "lsgan"),
                               0.5 * ((logits - 1).pow(2).mean() + (-logits).pow(2).mean()))
    torch.testing.assert_close(generator_loss(logits, "hinge"), -logits.mean())
    assert [alternating_role(s) for s in range(4)] == ["D", "G", "D", "G"]
    assert [alternating_role(s, d_steps=2) for s in range(3)] == ["D", "D", "G"]
    snapshot = frozen_copy(linear)
    assert not snapshot.training and not any(p.requires_grad for p in snapshot.parameters())


# --- schedule ------------------------------------------------------------------------------------
def test_schedule_splits_the_budget_and_refuses_too_small_ones():
    s = resolve_schedule(100, phase_two_fraction=0.2, g_old_fraction=0.3)
    assert (s.phase_one_steps, s.g_old_step, s.phase_two_steps) == (80, 24, 20)
    s = resolve_schedule(2, 0.2, 0.3)  # the smoke budget: one step per phase
    assert (s.phase_one_steps, s.phase_two_steps) == (1, 1) and s.g_old_step == 0
    for bad in (1, float("inf")):
        with pytest.raises(ConfigError, match="ognet"):
            resolve_schedule(bad, 0.2, 0.3)
    with pytest.raises(ConfigError, match="phase_two_fraction"):
        resolve_schedule(100, 1.0, 0.3)


def test_fit_refuses_a_one_step_budget(tmp_path):
    with pytest.raises(ConfigError, match="at least 2"):
        quiet_trainer(1).fit(OGNet(**_SMALL), datamodule=_datamodule(tmp_path))


# --- phase two -----------------------------------------------------------------------------------
def test_phase_two_examples_and_labels():
    torch.manual_seed(0)
    module = OGNet(**_SMALL).eval()
    model = module.model
    model.snapshot_old_generator(0)
    with torch.no_grad():  # make G and G_old different networks
        for p in model.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    examples = module.phase_two_examples(x)
    with torch.no_grad():
        old = model.generator_old(x)
        torch.testing.assert_close(examples["real"], x)
        torch.testing.assert_close(examples["reconstruction"], model.generator(x))
        torch.testing.assert_close(examples["old"], old)
        assert not torch.allclose(examples["reconstruction"], examples["old"])
        # every pseudo-anomaly is G (the paper's, not G_old) of the mean of G_old(x_i) and G_old(x_j), j != i
        for i in range(5):
            blends = [0.5 * (old[i : i + 1] + old[j : j + 1]) for j in range(5) if j != i]
            pseudo = examples["pseudo"][i : i + 1]
            assert any(torch.allclose(pseudo, model.generator(b), atol=1e-5) for b in blends), i
            assert not any(torch.allclose(pseudo, model.generator_old(b), atol=1e-3) for b in blends), i

    # labels: good kinds (real, G(x)) → 1, bad kinds (G_old(x), pseudo) → 0, weighted by β / α
    module.alpha, module.beta = 0.3, 0.8
    fixed = {"real": 1.5, "reconstruction": -0.5, "old": 0.7, "pseudo": -2.0}
    stub = {k: torch.full((5, 3, 64, 64), float(i)) for i, k in enumerate(fixed)}

    class StubD(torch.nn.Module):  # logit by kind, read from the constant the kind's images carry
        def forward(self, batch):
            return torch.tensor([list(fixed.values())[int(v)] for v in batch[:, 0, 0, 0]])

    model.discriminator = StubD()
    parts = module.phase_two_loss(stub)
    bce = lambda v, t: F.binary_cross_entropy_with_logits(torch.tensor(v), torch.tensor(t))  # noqa: E731
    expected = 0.8 * bce(1.5, 1.0) + 0.2 * bce(-0.5, 1.0) + 0.3 * bce(0.7, 0.0) + 0.7 * bce(-2.0, 0.0)
    torch.testing.assert_close(parts["loss_d2"], expected)


class _Recorder(L.Callback):
    """States of G (weights and BN statistics) and D at chosen steps, before that step's update."""

    def __init__(self, steps: dict[str, int]) -> None:
        self.steps, self.states = steps, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        for name, step in self.steps.items():
            if trainer.global_step == step:
                self.states[name] = (_state(module.model.generator), _state(module.model.discriminator))


def test_phase_two_freezes_g_trains_d_and_g_old_is_an_earlier_snapshot(tmp_path):
    L.seed_everything(0)
    module = OGNet(phase_two_fraction=0.3, g_old_fraction=0.3, **_SMALL)
    initial_g = _state(module.model.generator)
    schedule = resolve_schedule(12, 0.3, 0.3)  # phase one 0..7, G_old at step 2, phase two 8..11
    assert (schedule.phase_one_steps, schedule.g_old_step, schedule.phase_two_steps) == (8, 2, 4)
    recorder = _Recorder({"g_old": 2, "phase_two": 8})
    quiet_trainer(12, [recorder]).fit(module, datamodule=_datamodule(tmp_path))
    assert module.schedule == schedule and int(module.model.g_old_step) == 2

    g_at_snapshot, _ = recorder.states["g_old"]
    g_at_phase_two, d_at_phase_two = recorder.states["phase_two"]
    final_g, final_d = _state(module.model.generator), _state(module.model.discriminator)
    # G_old is G as it was at step 2: after one G update, before the later ones
    assert _same(_state(module.model.generator_old), g_at_snapshot)
    assert not _same(g_at_snapshot, initial_g) and not _same(g_at_snapshot, g_at_phase_two)
    # phase two: G untouched (weights and BN statistics), D trained
    assert _same(final_g, g_at_phase_two)
    assert not _same(final_d, d_at_phase_two)
    # the snapshot travels in the checkpoint
    fresh = OGNet(phase_two_fraction=0.3, g_old_fraction=0.3, **_SMALL)
    fresh.load_state_dict(module.state_dict())
    assert _same(_state(fresh.model.generator_old), g_at_snapshot) and int(fresh.model.g_old_step) == 2


# --- inference contract ---------------------------------------------------------------------------
def test_registered_and_output_contract():
    assert get_method("ognet") is OGNet
    model = OGNetModel(64, 3, (8, 16, 16, 32), (8, 16, 16, 32)).eval()
    images = torch.rand(3, 3, 64, 64)
    out = model(images)
    assert isinstance(out, AnomalyOutput) and out.anomaly_map.shape == (3, 64, 64) and out.pred_score.shape == (3,)
    x = images * 2 - 1
    with torch.no_grad():
        # −logit of D(G(x)); the default patch head's image-level output is its mean patch logit
        torch.testing.assert_close(out.pred_score, -model.discriminator(model.generator(x)).flatten(1).mean(1))
        linear = OGNetModel(64, 3, (8, 16, 16, 32), (8, 16, 16, 32), discriminator_head="linear",
                            discriminator_norm="batch", discriminator_kernel_size=None).eval()
        torch.testing.assert_close(linear(images).pred_score, -linear.discriminator(linear.generator(x)))
        # before residual statistics are fitted: the residual ‖x − G(x)‖₂, Gaussian-smoothed (σ = 2)
        residual = (x - model.generator(x)).pow(2).sum(1).sqrt()
        torch.testing.assert_close(out.anomaly_map, gaussian_blur(residual, 2.0))
    with pytest.raises(ValueError, match="multiple"):
        OGNetModel(60)


def test_gaussian_blur_smooths_and_keeps_constants():
    flat = torch.full((2, 16, 16), 3.0)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    impulse = torch.zeros(1, 33, 33)
    impulse[0, 16, 16] = 1.0
    blurred = gaussian_blur(impulse, 2.0)[0]
    torch.testing.assert_close(blurred.sum(), torch.tensor(1.0))
    row = blurred[16] / blurred[16].sum()  # the profile through the centre is a Gaussian with σ = 2
    t = torch.arange(33.0) - 16
    torch.testing.assert_close((row * t.pow(2)).sum().sqrt(), torch.tensor(2.0), atol=0.05, rtol=0)
    assert torch.equal(gaussian_blur(impulse, 0.0), impulse)


def test_map_standardisation_is_fitted_at_test_start_only_when_asked():
    """Default: prepare_inference leaves the map the smoothed raw residual (identity statistics);
    map_standardize=True fits the per-pixel statistics on the training images there."""
    train = [{"image": torch.rand(4, 3, 64, 64)}, {"image": torch.rand(4, 3, 64, 64)}]
    for standardize in (False, True):
        torch.manual_seed(0)
        module = OGNet(image_size=64, map_standardize=standardize)
        module.prepare_inference(train)
        model = module.model
        fitted = not (torch.all(model.residual_mean == 0) and torch.all(model.residual_std == 1))
        assert fitted is standardize


def test_pixel_map_is_standardised_with_training_statistics():
    """A pixel where G is bad on every normal image (a fixed, normal structure) must not outscore a defect.

    Training images carry a bright patch G cannot reproduce, at the same place in all of them; a test
    image has the same patch plus a smaller local defect elsewhere. The raw residual peaks on the patch,
    the standardised map (statistics of the training images) peaks on the defect.
    """
    torch.manual_seed(0)
    model = OGNetModel(64, 3, (8, 16, 16, 32), (8, 16, 16, 32), map_sigma=2.0).eval()
    train = 0.5 + 0.05 * torch.randn(16, 3, 64, 64)
    train[:, :, 4:14, 4:14] = 1.0  # normal structure, large residual on every training image
    test = train[:1].clone()
    test[:, :, 40:46, 40:46] = 0.8  # the defect
    with torch.no_grad():
        raw = model(test).anomaly_map[0]  # statistics not fitted yet: the smoothed raw residual
        assert raw[4:14, 4:14].max() > raw[40:46, 40:46].max()
        model.fit_residual_statistics([train[:8], train[8:]])
        standardised = model(test).anomaly_map[0]
        assert standardised[40:46, 40:46].max() > 2 * standardised[4:14, 4:14].max()
        # on the training images themselves (σ = 0): mean 0 at every pixel, std 1 where not floored
        model.map_sigma = 0.0
        train_maps = model(train).anomaly_map
        assert train_maps.mean(0).abs().max() < 1e-4
        assert (train_maps.std(0, unbiased=False) <= 1 + 1e-4).all()
        assert train_maps.std(0, unbiased=False).median() > 0.99
    # the statistics are buffers, so they travel in checkpoints
    fresh = OGNetModel(64, 3, (8, 16, 16, 32), (8, 16, 16, 32))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.residual_mean, model.residual_mean) and torch.equal(fresh.residual_std, model.residual_std)


# --- learning on synthetic data -------------------------------------------------------------------
class _InitialReconstruction(L.Callback):
    """Records the training images (in [-1, 1]) and G's reconstruction MSE of them as the fit starts (G in eval
    mode). Loaded here, after the module is built: iterating a loader draws a seed from the global RNG, and the
    measured values below come from that order (module, images, fit)."""

    def __init__(self) -> None:
        self.train, self.mse = torch.empty(0), float("nan")

    def on_fit_start(self, trainer, module):
        self.train = trainer.datamodule.training_images() * 2 - 1
        with torch.no_grad():
            self.mse = F.mse_loss(module.model.generator.eval()(self.train), self.train).item()


def _learned_metrics(tmp_path, category: str = "washer", seed: int = 0, max_steps: int = 600, n_train: int = 100,
                 **kwargs) -> dict[str, float]:
    """Fit + test; besides the evaluator's metrics, what the two phases learned on the training images."""
    initial = _InitialReconstruction()
    fitted = fit_and_test(lambda: OGNet(**kwargs), _datamodule(tmp_path, category, seed, n_train=n_train),
                          max_steps=max_steps, seed=seed, callbacks=[initial])
    module, train = fitted.module, initial.train
    assert int(module.model.g_old_step) == module.schedule.g_old_step
    module.eval()
    with torch.no_grad():
        examples = module.phase_two_examples(train)
        logits = {k: module.model.discriminator(v) for k, v in examples.items()}
        good = torch.cat([logits["real"], logits["reconstruction"]]) > 0
        bad = torch.cat([logits["old"], logits["pseudo"]]) < 0
        metrics = dict(fitted.metrics)
        metrics["d_phase_two_accuracy"] = torch.cat([good, bad]).float().mean().item()
        metrics["reconstruction_mse_ratio"] = F.mse_loss(examples["reconstruction"], train).item() / initial.mse
        # the paper score on the normal training images vs the same images half replaced by uniform noise
        # (model input is [0, 1]): far off the training distribution, so a correct sign ranks them higher
        normal = (train + 1) / 2
        generator = torch.Generator().manual_seed(seed)
        noisy = 0.5 * normal + 0.5 * torch.rand(normal.shape, generator=generator)
        scores = torch.cat([module.model(normal).pred_score, module.model(noisy).pred_score]).numpy()
        labels = np.r_[np.zeros(len(normal)), np.ones(len(noisy))]
        metrics["noise_image_auroc"] = float(roc_auc_score(labels, scores))
    return metrics


@pytest.mark.slow
def test_ognet_learns_on_synthetic(tmp_path, one_torch_thread):
    """Washer, 64×64, 100 training images, batch 8, 600 steps (480 phase one, G_old at step 144, 120 phase
    two), CPU at one torch thread, default patch-wise D, with λ_R = 10 instead of the paper's 0.4 so that
    G's reconstruction learns within its 240 updates. (The GAN's metrics depend on the thread count:
    float reduction order.)

    Measured 2026-12-02 (AMD EPYC, seeds 0/1/2; the paper's pseudo-anomaly G((G_old(x_i)+G_old(x_j))/2),
    smoothed residual map): D separates the four phase-two kinds on the training images (accuracy
    1.0 / 1.0 / 1.0; threshold 0.9); pixel AUROC of the map 0.799 / 0.790 / 0.777 (threshold 0.70);
    the paper's image score −D(G(x)) 0.625 / 0.570 / 0.570 on these synthetic defects (README "Results"),
    and 0.484 for seed 0 on an Intel Xeon: at chance, so it is not asserted (it cannot tell a flipped sign
    from a weak D). The sign is checked on images half replaced by noise instead (noise_image_auroc).
    """
    metrics = _learned_metrics(tmp_path, lambda_reconstruction=10.0)
    assert metrics["d_phase_two_accuracy"] >= 0.9, metrics
    assert metrics["pixel_auroc"] >= 0.70, metrics
    assert metrics["noise_image_auroc"] >= 0.9, metrics
