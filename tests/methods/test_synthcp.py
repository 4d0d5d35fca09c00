"""SynthCP: k-means layout fitted on training images only, layout-conditioned generator, comparison map, learning."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from anobench.methods import get_method
from anobench.methods.base import AnomalyOutput
from anobench.methods.synthcp import LayoutGenerator, SynthCP, kmeans
from anobench.methods.synthcp.torch_model import cosine_distance_map
from anobench.metrics.pooling import MAP_POOLING, pool_maps
from fitting import fit_and_test, quiet_trainer, synthetic_datamodule

# Pinned: a random-weight ResNet-18, whatever SynthCP's default backbone is, so the tests (and the measured
# values in the learning test's docstring) do not move when the default changes.
_BACKBONE = dict(backbone="resnet18", pretrained=False)
_SMALL = dict(**_BACKBONE, generator_channels=(32, 16, 16, 8), spade_hidden=16, discriminator_channels=(8, 16))


def _datamodule(tmp_path, category: str = "washer", seed: int = 0, batch: int = 8, size: int = 64):
    return synthetic_datamodule(tmp_path, category, image_size=size, batch_size=batch, eval_batch_size=16,
                                train_repeats=50, seed=seed)


def _images(loader) -> torch.Tensor:
    return torch.cat([b["image"] for b in loader])


def test_kmeans_recovers_separated_clusters_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=gen) for c in centres])
    found = kmeans(x, 3, seed=1)
    assert torch.cdist(found, centres).min(dim=0).values.max() < 0.1, found
    torch.testing.assert_close(found, kmeans(x, 3, seed=1))
    with pytest.raises(ValueError):
        kmeans(x[:2], 3)


def test_generator_output_depends_on_the_layout():
    torch.manual_seed(0)
    gen = LayoutGenerator(4, (16, 8, 8, 8), hidden=8).eval()
    labels = torch.randint(0, 4, (1, 8, 8))
    layout = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    changed = labels.clone()
    changed[0, :4, :4] = (changed[0, :4, :4] + 1) % 4  # relabel the top-left quarter only
    other = torch.nn.functional.one_hot(changed, 4).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        a, b = gen(layout), gen(other)
    assert a.shape == (1, 3, 64, 64) and (a.abs() <= 1).all()
    diff = (a - b).abs().mean(dim=1)[0]
    assert diff[:32, :32].mean() > 5 * diff[40:, 40:].mean() > 0  # the change shows where the layout changed
    torch.testing.assert_close(gen(layout), a)  # deterministic: no noise input


def test_layout_is_fitted_on_training_images_only(tmp_path):
    L.seed_everything(0)
    module = SynthCP(**_SMALL)
    datamodule = _datamodule(tmp_path)
    trainer = quiet_trainer(4)
    trainer.fit(module, datamodule=datamodule)
    assert bool(module.model.layout_fitted)
    fitted = module.model.centroids.clone()
    train = _images(datamodule.inference_train_dataloader())
    test = _images(datamodule.test_dataloader())

    def fit_on(images):
        probe = SynthCP(**_SMALL)
        probe.model.features.load_state_dict(module.model.features.state_dict())
        probe.model.fit_layout([images], seed=module.kmeans_seed)
        return probe.model.centroids

    torch.testing.assert_close(fitted, fit_on(train))  # exactly the training images' k-means
    assert not torch.allclose(fitted, fit_on(test))
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert torch.equal(module.model.centroids, fitted)  # testing never refits the layout
    layout = module.model.layout(test[:3])
    assert layout.shape == (3, 8, 8, 8) and torch.equal(layout.sum(1), torch.ones(3, 8, 8))
    # centroids travel in the checkpoint
    fresh = SynthCP(**_SMALL)
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh.model.centroids, fitted) and bool(fresh.model.layout_fitted)


def test_output_contract_and_comparison_map():
    assert get_method("synthcp") is SynthCP
    torch.manual_seed(0)
    module = SynthCP(**_SMALL).eval()
    images = torch.rand(3, 3, 64, 64)
    module.model.fit_layout([torch.rand(4, 3, 64, 64)])
    out = module.model(images)
    assert isinstance(out, AnomalyOutput) and out.anomaly_map.shape == (3, 64, 64)
    torch.testing.assert_close(out.pred_score, pool_maps(out.anomaly_map, MAP_POOLING))  # no paper score: the one rule
    assert (out.anomaly_map >= -1e-6).all() and (out.anomaly_map <= 2 + 1e-6).all()
    f = module.model.features(images)
    assert cosine_distance_map(f["layer1"], f["layer1"]).abs().max() < 1e-4  # identical features: zero distance
    with pytest.raises(RuntimeError, match="not fitted"):
        SynthCP(**_SMALL).model(images)


def test_generator_trains_and_feature_network_stays_frozen(tmp_path):
    L.seed_everything(0)
    module = SynthCP(**_SMALL)
    features = {k: v.clone() for k, v in module.model.features.state_dict().items()}
    generator = [p.detach().clone() for p in module.model.generator.parameters()]
    discriminator = [p.detach().clone() for p in module.discriminator.parameters()]
    quiet_trainer(4).fit(module, datamodule=_datamodule(tmp_path))
    assert all(torch.equal(v, module.model.features.state_dict()[k]) for k, v in features.items())
    assert any(not torch.equal(a, b) for a, b in zip(generator, module.model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(discriminator, module.discriminator.parameters()))


# --- learning on synthetic data -------------------------------------------------------------------
def _learned_metrics(tmp_path, category: str = "washer", seed: int = 0, max_steps: int = 120) -> dict[str, float]:
    return fit_and_test(lambda: SynthCP(**_BACKBONE), _datamodule(tmp_path, category, seed), max_steps=max_steps,
                        seed=seed).metrics


@pytest.mark.slow
def test_synthcp_learns_on_synthetic(tmp_path, one_torch_thread):
    """Washer, 64×64, batch 8, 120 steps (60 D + 60 G updates), random-weight ResNet-18 (pretrained=false), CPU
    at one torch thread.

    Measured (seeds 0/1/2): image AUROC (max of the map) 0.672 / 0.711 / 0.680, pixel AUROC
    0.846 / 0.719 / 0.675. Thresholds: image 0.62 (as the reconstruction methods' tests), pixel 0.72
    (seed 0's value with margin; the pixel level varies more over seeds than the image level). The image
    level is not robust across categories (tablet 0.57, weave 0.50, seed 0; GPU sweep at 1000 steps:
    0.23–0.62 over the four): the map's maximum often falls on object outlines and texture edges, whose
    positions vary between normal images — see README "Results".
    """
    metrics = _learned_metrics(tmp_path)
    assert metrics["pixel_auroc"] >= 0.72, metrics
    assert metrics["image_auroc"] >= 0.62, metrics
