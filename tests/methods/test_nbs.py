"""Neural Batch Sampling: FIFO loss profiles, the sampler drives the AE's batches, the policy learns,
labelled images never reach the evaluation, inference from the checkpoint state, learning end to end."""

from __future__ import annotations

import pytest
import torch

from anobench.data import AnomalyDataModule
from anobench.methods import get_method
from anobench.methods.base import AnomalyOutput
from anobench.methods.nbs import LossProfileBuffer, NBSModel, NeuralBatchSampling, select_from_test_split
from anobench.methods.nbs.labelled import build_labelled_set, render_on_train_images
from anobench.metrics.pooling import MAP_POOLING, pool_maps
from fitting import SMALL_SYNTHETIC, fit_and_test, quiet_trainer, synthetic_datamodule


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One synthetic washer for the whole file (generating it is the slow part of the small tests)."""
    return tmp_path_factory.mktemp("nbs_data")


def _datamodule(root, category: str = "washer", seed: int = 0, **synthetic) -> AnomalyDataModule:
    """128 px, batch 8; SMALL_SYNTHETIC (12 train, 8 good + 16 defective test) unless `synthetic` says otherwise."""
    return synthetic_datamodule(root, category, image_size=128, batch_size=8, eval_batch_size=16, train_repeats=100,
                                seed=seed, synthetic={**SMALL_SYNTHETIC, **synthetic})


class _PreferLocation(torch.nn.Module):
    """A stand-in policy whose logits put all the mass on one location, for every state."""

    def __init__(self, n_locations: int, location: int) -> None:
        super().__init__()
        self.logits = torch.full((n_locations,), -1e4).index_fill_(0, torch.tensor([location]), 1e4)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(state.shape[0], -1)


# --- loss-profile buffer ----------------------------------------------------------------------------
def test_buffer_keeps_exactly_the_last_T_values_in_order():
    buffer = LossProfileBuffer(profile_length=5)
    images = torch.rand(3, 3, 32, 32)
    buffer.reset(images, cell=4)
    assert buffer.profiles.shape == (3, 5, 8, 8)
    pushed = [torch.full((3, 8, 8), float(t)) + torch.arange(3.0)[:, None, None] * 100 for t in range(1, 9)]
    buffer.push(pushed[0])
    buffer.push(pushed[1])
    early = buffer.read()  # 2 of 5 values: the front is padded with the oldest value
    assert early[0, :, 0, 0].tolist() == [1, 1, 1, 1, 2]
    for value in pushed[2:]:
        buffer.push(value)
    assert int(buffer.count) == 8
    profiles = buffer.read()
    assert profiles[0, :, 3, 3].tolist() == [4, 5, 6, 7, 8]  # exactly the last T, oldest first
    assert profiles[2, :, 0, 0].tolist() == [204, 205, 206, 207, 208]  # per image, per cell
    with pytest.raises(ValueError):
        buffer.push(torch.zeros(2, 8, 8))


def test_buffer_finds_images_by_content_and_refuses_unknown_ones():
    buffer = LossProfileBuffer(profile_length=3)
    images = torch.rand(4, 3, 32, 32)
    buffer.reset(images, cell=4)
    buffer.push(torch.rand(4, 8, 8))
    assert buffer.lookup(images[[2, 0, 3]]).tolist() == [2, 0, 3]
    with pytest.raises(ValueError, match="transductive"):
        buffer.lookup(torch.rand(1, 3, 32, 32))


# --- sampler ----------------------------------------------------------------------------------------
def _module_with_pool(n_tracked: int = 4, size: int = 64, **kwargs) -> NeuralBatchSampling:
    torch.manual_seed(0)
    module = NeuralBatchSampling(**kwargs)
    module._pool = torch.rand(n_tracked, 3, size, size)
    module.model.buffer.reset(module._pool, module.model.cell_size)
    module.model.buffer.push(module.model.loss_maps(module._pool))
    return module


def test_sampler_choices_are_the_ae_batch():
    """The patches the AE trains on are exactly the crops at the policy's sampled locations, and a
    policy that prefers another location produces another batch."""
    module = _module_with_pool(inspected_patches=3)
    model: NBSModel = module.model
    images = torch.rand(2, 3, 64, 64)
    n = model.location_grid(64)
    assert n == 3  # 32 px patches every 16 px

    def batch_with_policy_preferring(location: int) -> tuple[torch.Tensor, torch.Tensor]:
        learned = model.policy
        model.policy = _PreferLocation(n * n, location)
        try:
            return module.ae_batch(images)
        finally:
            model.policy = learned

    patches_a, loc_a = batch_with_policy_preferring(0)
    patches_b, loc_b = batch_with_policy_preferring(n * n - 1)
    assert loc_a.tolist() == [0] * 5 and loc_b.tolist() == [n * n - 1] * 5
    assert patches_a.shape == (5, 3, 32, 32)  # 2 training images + 3 inspected
    torch.testing.assert_close(patches_a[:2], images[:, :, :32, :32])
    torch.testing.assert_close(patches_b[:2], images[:, :, 32:, 32:])
    assert not torch.equal(patches_a, patches_b)
    # the inspected patches come from the tracked images
    for patch in patches_b[2:]:
        assert any(torch.equal(patch, img[:, 32:, 32:]) for img in module._pool)


def test_uniform_sampler_ignores_the_policy():
    module = _module_with_pool(sampler="uniform", inspected_patches=0)
    torch.manual_seed(1)
    _, locations = module.ae_batch(torch.rand(64, 3, 64, 64))
    assert len(locations.unique()) == 9 and not module._log_probs


def test_policy_parameters_move_by_reinforce(data_root, tmp_path):
    """With no entropy bonus, only the policy-gradient term can move the policy: it must."""
    datamodule = _datamodule(data_root)
    module = NeuralBatchSampling(entropy_weight=0.0, profile_every=1)
    before = [p.detach().clone() for p in module.model.policy.parameters()]
    quiet_trainer(6).fit(module, datamodule=datamodule)
    after = list(module.model.policy.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


# --- semi-supervised protocol -----------------------------------------------------------------------
def test_test_split_selection_is_seeded_and_leaves_every_type_in_evaluation(data_root, tmp_path):
    datamodule = _datamodule(data_root)
    datamodule.setup()
    samples = datamodule.test_samples
    rows = select_from_test_split(samples, k=2, n_normal=3, seed=0)
    assert rows == select_from_test_split(samples, k=2, n_normal=3, seed=0)
    assert rows != select_from_test_split(samples, k=2, n_normal=3, seed=1)
    types = [samples[i].defect_type for i in rows]
    assert types.count("good") == 3 and all(types.count(d) == 2 for d in set(types) - {"good"})
    assert len(set(types)) == 5
    capped = select_from_test_split(samples, k=10, n_normal=10, seed=0)  # k is capped per type
    left = [s.defect_type for i, s in enumerate(samples) if i not in capped]
    assert sorted(set(left)) == sorted({s.defect_type for s in samples}) and len(left) == 5


def test_synthetic_source_renders_new_images_and_excludes_nothing(data_root, tmp_path):
    datamodule = _datamodule(data_root)
    datamodule.setup()
    labelled = build_labelled_set(datamodule, "synthetic", k=1, n_normal=1, seed=0)
    assert labelled.test_indices == [] and labelled.info["source"] == "synthetic"
    assert labelled.images.shape == (5, 3, 128, 128) and labelled.masks.shape == (5, 128, 128)
    assert labelled.masks[:4].flatten(1).any(dim=1).all() and not labelled.masks[4].any()
    test_images = torch.cat([b["image"] for b in datamodule.test_dataloader()])
    assert (labelled.images[:, None] - test_images[None]).abs().flatten(2).amax(dim=2).min() > 0.05


def test_generator_defects_on_real_images_change_only_the_masked_pixels():
    """The synthetic source on MVTec: the generator's defect renderers applied to training images."""
    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=gen), size=128, mode="bilinear")
    train = (0.3 + 0.4 * smooth).float()
    images, masks, names = render_on_train_images(train, k=1, n_normal=2, seed=0)
    assert images.shape == (7, 3, 128, 128) and len(names) == 7
    assert masks[:5].flatten(1).any(dim=1).all() and not masks[5:].any()
    for image, mask, name in zip(images[:5], masks[:5], names[:5]):
        base = train[int(name.rsplit("/", 1)[1])]
        changed = (image - base).abs().amax(dim=0) > 1.5 / 255  # beyond 8-bit rounding of the base
        assert changed.any() and not (changed & ~mask).any(), name
    again = render_on_train_images(train, k=1, n_normal=2, seed=0)
    assert torch.equal(again[0], images) and again[2] == names


def test_labelled_images_never_appear_in_the_evaluated_set(data_root, tmp_path):
    datamodule = _datamodule(data_root)
    fitted = fit_and_test(lambda: NeuralBatchSampling(labelled_k=1, labelled_normal=2), datamodule, max_steps=4)
    module, outcome = fitted.module, fitted.outcome
    record = outcome.evaluation_record()  # result.json's "evaluation" block
    excluded = record["excluded_test_indices"]
    n_total = len(datamodule.test_samples)
    assert len(excluded) == 4 + 2  # one per defect type + two good
    # what the evaluator was given: exactly the other test images' maps (and what it reports having scored)
    assert outcome.indices == [i for i in range(n_total) if i not in excluded]
    assert len(outcome.maps) == len(outcome.scores) == n_total - 6 and record["n_images"] == n_total - 6
    assert record["n_test_images_total"] == n_total
    labelled = record["labelled_set"]
    assert labelled["source"] == "test_split" and labelled["test_indices"] == excluded
    assert record["supervision"] == "semi_supervised"
    # the predictor did learn from exactly those rows
    assert module._labelled_rows.tolist() == excluded


def test_tiny_test_split_falls_back_to_synthetic_and_says_so(tmp_path):
    datamodule = _datamodule(tmp_path, n_test_per_defect=1, n_test_good=2, n_train=4)
    module = NeuralBatchSampling()
    with pytest.warns(UserWarning, match="synthetic generator"):
        quiet_trainer(2).fit(module, datamodule=datamodule)
    assert module.labelled_info["source"] == "synthetic" and "fallback" in module.labelled_info
    assert module.excluded_test_indices.numel() == 0


# --- inference from the checkpoint's state ----------------------------------------------------------
def test_checkpoint_holds_profiles_and_exclusions(data_root, tmp_path):
    datamodule = _datamodule(data_root)
    module = NeuralBatchSampling()
    trainer = quiet_trainer(4)
    trainer.fit(module, datamodule=datamodule)
    ckpt = tmp_path / "nbs.ckpt"
    trainer.save_checkpoint(ckpt)
    reloaded = get_method("nbs").load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert torch.equal(reloaded.model.buffer.profiles, module.model.buffer.profiles)
    assert reloaded.excluded_test_indices.tolist() == module.excluded_test_indices.tolist()
    assert reloaded.labelled_info == module.labelled_info
    # `anobench eval` restores with load_state_dict alone: that must carry the same state
    fresh = NeuralBatchSampling()
    fresh.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    assert fresh.excluded_test_indices.tolist() == module.excluded_test_indices.tolist()
    assert fresh.labelled_info == module.labelled_info and fresh.labelled_info["source"] == "test_split"
    batch = next(iter(datamodule.test_dataloader()))
    out = reloaded.model(batch["image"])
    assert isinstance(out, AnomalyOutput) and out.anomaly_map.shape == (16, 128, 128)
    top = out.anomaly_map.flatten(1).topk(round(0.01 * 128 * 128), dim=1).values.mean(dim=1)
    assert MAP_POOLING == "top1_mean"
    torch.testing.assert_close(out.pred_score, top)  # image score: the one map pooling rule, mean of the top 1 %


def test_predictor_loss_adds_the_good_images_hottest_cells_term():
    """image_loss_weight adds BCE(the image-score pooling of each labelled *good* image's logits, 0):
    it trains against the hot normal regions that make an image score rank good images above defective ones.
    Defective images get no image term (their top cells are mostly normal when the defect is small)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    module = _module_with_pool(n_tracked=4, size=64, image_loss_weight=0.0)
    module._labelled_rows = torch.tensor([0, 1, 2])
    masks = torch.zeros(3, 16, 16)
    masks[2, 3:5, 3:5] = 1.0  # rows 0, 1 good; row 2 defective
    module._labelled_masks = masks
    per_cell = module.predictor_loss(augment=False)
    module.image_loss_weight = 2.0
    with torch.no_grad():
        logits = module.model.predictor(module.model.buffer.read(torch.tensor([0, 1])))
    tails = pool_maps(logits, MAP_POOLING)
    expected = per_cell + 2.0 * F.binary_cross_entropy_with_logits(tails, torch.zeros(2))
    torch.testing.assert_close(module.predictor_loss(augment=False), expected)
    module._labelled_masks = masks[[2, 2, 2]]  # no good image labelled: no image term
    with_term = module.predictor_loss(augment=False)
    module.image_loss_weight = 0.0
    torch.testing.assert_close(with_term, module.predictor_loss(augment=False))
    with pytest.raises(ValueError, match="pos_weight_cap"):
        NeuralBatchSampling(pos_weight_cap=0.5)


# --- learning end to end ----------------------------------------------------------------------------
@pytest.mark.slow
def test_nbs_learns_and_its_image_score_is_not_inverted(data_root, tmp_path):
    """Washer, 200 AE steps, three labelled sets (labelled_seed 0, 1, 2; k = 1 per defect type + 2 good test
    images, excluded: 18 evaluated). The image score must rank defective above good images on *every*
    labelled set: issue 32 found sets where good images out-scored defective ones while the pixel AUROC
    stayed high.

    Measured 2026-12-07 (Intel, one thread), labelled seeds 0 / 1 / 2: image AUROC (top-1 % mean, the map pooling
    rule) 0.750 / 0.875 / 0.819, pixel AUROC 0.887 / 0.892 / 0.906. The one-sided image term of README deviation 9
    (`image_loss_weight: 1`) gives 0.736 / **0.125** / 0.819 here, and this test fails on it. Earlier training seeds
    1 and 2 (AMD, top-5 % score) gave image 0.778 / 0.556, pixel 0.899 / 0.867; thresholds sit below the lowest:
    image >= 0.53 (chance 0.5), pixel >= 0.82.
    """
    images = {}
    for labelled_seed in (0, 1, 2):
        fitted = fit_and_test(lambda: NeuralBatchSampling(labelled_seed=labelled_seed),
                              _datamodule(data_root, seed=0), max_steps=200, seed=0)
        assert torch.isfinite(fitted.fit.logged["train/reward"])  # the sampler got rewards
        metrics = fitted.metrics
        assert metrics["pixel_auroc"] >= 0.82, (labelled_seed, metrics)
        images[labelled_seed] = metrics["image_auroc"]
    assert all(value >= 0.53 for value in images.values()), images


def test_reward_baseline_centres_advantages_of_a_rising_reward_and_keeps_their_sign():
    """The reward (−predictor loss) rises while the predictor learns: a lagging EMA baseline made
    nearly every advantage positive (88 % measured); the trend baseline centres them. A reward above
    the prediction must give a positive advantage (a flipped sign fails), and no baseline fails too."""
    import numpy as np

    from anobench.methods.nbs.module import RewardBaseline

    rng = np.random.default_rng(0)
    rewards = -1.0 + np.linspace(0.0, 0.5, 150) + 0.02 * rng.standard_normal(150)
    baseline = RewardBaseline(0.9)
    advantages = np.array([baseline.advantage(float(r))[0] for r in rewards])[1:]
    assert 0.35 <= (advantages > 0).mean() <= 0.65
    assert abs(advantages.mean()) < 0.2 * advantages.std()
    steady = RewardBaseline(0.9)
    for _ in range(20):
        steady.advantage(-1.0)
    advantage, scaled = steady.advantage(-0.5)  # better than predicted
    assert advantage == pytest.approx(0.5) and scaled > 0
    assert steady.advantage(-1.5)[0] < 0        # worse than predicted
