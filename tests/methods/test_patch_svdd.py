"""Patch SVDD: dense = patch-by-patch embeddings, exact NN, sampling, loss, output contract, learning."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from anobench.errors import ConfigError
from anobench.methods import get_method
from anobench.methods.base import AnomalyOutput
from anobench.methods.patch_svdd import EncoderHier, EncoderSmall, PatchSVDD, PatchSVDDModel, PositionClassifier
from anobench.methods.patch_svdd.nearest import (
    CERTIFIED_MIN_ROWS,
    CertifiedExactSearch,
    NearestNeighbourIndex,
    NearestNeighbourSettings,
    nearest_distances,
    subsample_bank,
)
from anobench.methods.patch_svdd.sampling import (
    POS_TO_DIFF,
    crop_patches,
    min_image_size,
    sample_position_pairs,
    sample_svdd_pairs,
)
from anobench.methods.patch_svdd.torch_model import distribute_scores
from fitting import SMALL_SYNTHETIC, FitRecord, fit_and_test, quiet_trainer, synthetic_datamodule


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Larger-than-default weights so embeddings are not all ≈ 0 (tanh of tiny activations)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / max(1, p[0].numel()) ** 0.5))


def _patches(x: torch.Tensor, k: int, stride: int) -> tuple[torch.Tensor, int, int]:
    """All k×k patches at `stride`, row-major: (n_h·n_w)·B × C × k × k."""
    b, c, h, w = x.shape
    n_h, n_w = (h - k) // stride + 1, (w - k) // stride + 1
    cols = F.unfold(x, k, stride=stride)  # B × C·k·k × L
    return cols.transpose(1, 2).reshape(b * n_h * n_w, c, k, k), n_h, n_w


# --- architecture ---------------------------------------------------------------------------------
def test_encoder_shapes_and_shared_small_encoder():
    small = EncoderSmall(64)
    assert small(torch.rand(5, 3, 32, 32)).shape == (5, 64, 1, 1)
    hier = EncoderHier(64)
    assert hier(torch.rand(5, 3, 64, 64)).shape == (5, 64, 1, 1)
    assert [c.out_channels for c in small.convs] == [32, 64, 128, 128, 64, 32, 32, 64]
    assert [c.stride for c in small.convs] == [(2, 2)] + [(1, 1)] * 7
    model = PatchSVDDModel()
    assert model.encoder_small is model.encoder.enc  # K=32 inference uses the encoder inside EncoderHier
    logits = PositionClassifier(64)(torch.rand(7, 64, 1, 1), torch.rand(7, 64, 1, 1))
    assert logits.shape == (7, 8)
    assert not PositionClassifier(64).fc3.weight.requires_grad  # official: the WN weight gets no gradient


def test_one_small_encoder_pass_for_both_patch_sizes_equals_two():
    """Training encodes the K = 64 sub-patches and the K = 32 patches in one pass: same embeddings."""
    torch.manual_seed(0)
    hier = EncoderHier(64)
    big, small = torch.rand(3, 3, 64, 64) - 0.5, torch.rand(5, 3, 32, 32) - 0.5
    h_big, h_small = hier.forward_with_small(big, small)
    torch.testing.assert_close(h_big, hier(big), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h_small, hier.enc(small), atol=1e-6, rtol=1e-5)


def test_inference_stays_float32_under_bf16_autocast():
    """trainer.precision=bf16-mixed speeds up training only: banks and test embeddings are float32 (bf16
    keeps ~3 digits, too few for nearest-neighbour distances), so the map equals the float32 one."""
    model, test = _fitted_model()
    train = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encoder_small(test[..., :32, :32]).dtype == torch.bfloat16  # autocast is active here
        model.fit_bank([train])
        bank, out = model.bank_32.clone(), model(test).anomaly_map
    model.fit_bank([train])
    assert bank.dtype == out.dtype == torch.float32
    torch.testing.assert_close(bank, model.bank_32, atol=0, rtol=0)
    torch.testing.assert_close(out, model(test).anomaly_map, atol=0, rtol=0)


def test_cpu_chunked_encoder_equals_whole_batch():
    """encoder_cpu_chunk only splits the batch into calls: same embeddings and parameter gradients."""
    torch.manual_seed(0)
    whole = EncoderSmall(64)
    chunked = EncoderSmall(64, cpu_chunk=2)
    chunked.load_state_dict(whole.state_dict())
    for x in (torch.rand(5, 3, 32, 32) - 0.5, torch.rand(3, 3, 48, 48) - 0.5):  # 2 patches / 1 image per call
        a, b = whole(x), chunked(x)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        a.square().sum().backward()
        b.square().sum().backward()
    for p, q in zip(whole.parameters(), chunked.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="encoder_cpu_chunk"):
        EncoderSmall(64, cpu_chunk=0)


@pytest.mark.parametrize("size", [150, 256])
def test_dense_embeddings_equal_patch_by_patch(size):
    torch.manual_seed(0)
    model = PatchSVDDModel().eval()
    _randomize(model)
    x = torch.rand(1, 3, size, size) - 0.5
    with torch.no_grad():
        emb64, emb32 = model.dense_embeddings(x)
        assert emb32.abs().mean() > 0.05  # non-trivial embeddings, or the comparison means little
        p32, n_h, n_w = _patches(x, 32, 4)
        if size > 150:  # the full 256² K=32 grid is 3249 patches; check every 3rd row there
            keep = torch.arange(n_h * n_w).reshape(n_h, n_w)[::3].reshape(-1)
            ref32 = model.encoder_small(p32[keep]).reshape(-1, 64)
            got32 = emb32[0].permute(1, 2, 0)[::3].reshape(-1, 64)
        else:
            ref32 = model.encoder_small(p32).reshape(-1, 64)
            got32 = emb32[0].permute(1, 2, 0).reshape(-1, 64)
        assert emb32.shape[-2:] == (n_h, n_w)
        torch.testing.assert_close(got32, ref32, atol=1e-5, rtol=1e-4)

        p64, n_h, n_w = _patches(x, 64, 16)
        ref64 = model.encoder(p64).reshape(-1, 64)
        assert emb64.shape[-2:] == (n_h, n_w)
        torch.testing.assert_close(emb64[0].permute(1, 2, 0).reshape(-1, 64), ref64, atol=1e-5, rtol=1e-4)


def test_dense_embeddings_other_stride_path():
    """A K=64 stride that does not divide the 32 px sub-patch offset uses the full dilated head."""
    torch.manual_seed(1)
    model = PatchSVDDModel(stride_64=12).eval()
    _randomize(model, seed=1)
    x = torch.rand(1, 3, 136, 136) - 0.5
    with torch.no_grad():
        emb64, _ = model.dense_embeddings(x)
        p64, n_h, n_w = _patches(x, 64, 12)
        torch.testing.assert_close(
            emb64[0].permute(1, 2, 0).reshape(-1, 64), model.encoder(p64).reshape(-1, 64), atol=1e-5, rtol=1e-4
        )


def test_distribute_scores_matches_loop():
    scores = torch.rand(2, 6, 6)
    got = distribute_scores(scores, (150, 150), patch=64, stride=16)
    total, count = torch.zeros(2, 150, 150), torch.zeros(150, 150)
    for i in range(6):
        for j in range(6):
            total[:, i * 16 : i * 16 + 64, j * 16 : j * 16 + 64] += scores[:, i, j, None, None]
            count[i * 16 : i * 16 + 64, j * 16 : j * 16 + 64] += 1
    torch.testing.assert_close(got, total / count.clamp_min(1))


# --- nearest neighbour ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk, block", [(7, 50), (64, 64 * 300), (4096, None)])
def test_nearest_exact_equals_brute_force(chunk, block):
    gen = torch.Generator().manual_seed(0)
    bank = torch.tanh(torch.randn(3000, 64, generator=gen))
    queries = torch.cat([torch.tanh(torch.randn(500, 64, generator=gen)), bank[:20] + 1e-4])
    ref = torch.cdist(queries, bank, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    dist, index = nearest_distances(queries, bank, chunk_size=chunk, return_index=True, block_elements=block)
    torch.testing.assert_close(dist, ref.values, atol=1e-5, rtol=1e-5)
    assert (index == ref.indices).float().mean() > 0.99


def test_bank_subsample_is_seeded_subset_and_biases_up():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(1000, 8, generator=gen)
    queries = torch.randn(200, 8, generator=gen)
    half = subsample_bank(bank, 0.5, seed=3)
    assert half.shape == (500, 8)
    torch.testing.assert_close(half, subsample_bank(bank, 0.5, seed=3))
    assert subsample_bank(bank, 100).shape == (100, 8)
    assert subsample_bank(bank, None) is bank
    assert (nearest_distances(queries, half) >= nearest_distances(queries, bank) - 1e-6).all()
    with pytest.raises(ValueError):
        subsample_bank(bank, 1.5)


# --- sampling -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [64, 32])
def test_position_pairs_valid(k):
    torch.manual_seed(0)
    n, s = 4000, 256
    p1, p2, labels = sample_position_pairs(n, s, s, k)
    assert labels.min() >= 0 and labels.max() <= 7 and len(labels.unique()) == 8
    for p in (p1, p2):
        assert p.min() >= 0 and p.max() <= s - k
    diff, direction = p2 - p1, POS_TO_DIFF[labels]
    # never the wrong side; unclipped offsets in [3K/4, K)
    assert ((diff * direction) >= 0).all() and (diff[direction == 0] == 0).all()
    unclipped = ((p1 + direction * (k - 1) >= 0) & (p1 + direction * (k - 1) <= s - k)).all(dim=1)
    mag = (diff * direction)[unclipped][direction[unclipped] != 0]
    assert mag.min() >= 3 * k // 4 and mag.max() <= k - 1
    # crops are the right pixels
    images = torch.rand(3, 3, s, s)
    crops = crop_patches(images, p2[:3], k)
    for i in range(3):
        r, c = p2[i].tolist()
        torch.testing.assert_close(crops[i], images[i, :, r : r + k, c : c + k])


def test_crop_by_image_index_equals_crop_of_the_selected_images():
    torch.manual_seed(0)
    train_set = torch.rand(5, 3, 40, 40)
    index = torch.tensor([4, 0, 4, 2])
    corners = torch.randint(0, 40 - 16 + 1, (4, 2))
    crops = crop_patches(train_set, corners, 16, index)
    assert torch.equal(crops, crop_patches(train_set[index], corners, 16))
    r, c = corners[2].tolist()
    assert torch.equal(crops[2], train_set[4, :, r : r + 16, c : c + 16])


def test_losses_from_the_kept_training_set_equal_losses_on_image_batches():
    """The training step crops from the normalised training set by batch["index"] (no image batch):
    same RNG draws, same crops, so every loss term is bit-identical to the image-batch path."""
    module = PatchSVDD()
    _randomize(module, seed=1)
    images = torch.rand(6, 3, 192, 192)
    module.model.fit_mean([images])
    train_set = module.model.normalize(images)
    index = torch.tensor([5, 1, 1, 3])
    torch.manual_seed(7)
    from_batch = module.compute_losses(images[index])
    torch.manual_seed(7)
    from_set = module.losses_from_normalised(train_set, index)
    assert from_batch.keys() == from_set.keys()
    for key in from_batch:
        assert torch.equal(from_batch[key], from_set[key]), key


@pytest.mark.parametrize("k", [64, 32])
def test_svdd_pairs_jitter(k):
    torch.manual_seed(0)
    p1, p2 = sample_svdd_pairs(3000, 256, 256, k)
    jitter = (p2 - p1).abs()
    assert jitter.max() <= k // 32
    interior = ((p1 >= k // 32) & (p1 <= 256 - k - k // 32)).all(dim=1)
    assert (jitter[interior].sum(dim=1) > 0).all()  # never the same patch unless clipped


def test_small_image_is_refused_with_its_size():
    assert min_image_size(64) == 190
    module = PatchSVDD()
    images = torch.rand(2, 3, 160, 160)
    module.model.fit_mean([images])
    with pytest.raises(ValueError, match="160×160"):
        module.compute_losses(images)
    sample_position_pairs(4, 190, 190, 64)  # the minimum itself is fine


# --- training / inference contract ----------------------------------------------------------------
def test_registered_and_constructor():
    assert get_method("patch_svdd") is PatchSVDD
    module = PatchSVDD(embedding_dim=32, lambda_svdd=1e-3, bank_subsample=0.5, nn_chunk_size=128)
    assert module.model.D == 32 and module.model.nearest.chunk_size == 128
    assert module.model.nearest is module.nearest  # one settings object, built once from the nn_* keys


def test_nearest_neighbour_settings_are_validated_once_naming_the_config_key():
    """The seven nn_* keys become one frozen NearestNeighbourSettings; a bad value stops the constructor
    with a ConfigError naming its key (no search is ever built with it)."""
    import dataclasses

    for key, value, match in (("nn_search", "kdtree", "method.module.nn_search='kdtree'"),
                              ("nn_nlist", 0, "method.module.nn_nlist=0"),
                              ("nn_nprobe", 0, "method.module.nn_nprobe=0"),
                              ("nn_hnsw_m", 1, "method.module.nn_hnsw_m=1"),
                              ("nn_ef_construction", 0, "method.module.nn_ef_construction=0"),
                              ("nn_ef_search", 0, "method.module.nn_ef_search=0"),
                              ("nn_chunk_size", 0, "method.module.nn_chunk_size=0"),
                              ("nn_nprobe", 2.5, "method.module.nn_nprobe=2.5")):
        with pytest.raises(ConfigError, match=re.escape(match)):
            PatchSVDD(**{key: value})
    settings = PatchSVDD(nn_search="ivf", nn_nlist=16, nn_nprobe=4).nearest
    assert settings == NearestNeighbourSettings("ivf", nlist=16, nprobe=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.search = "exact"
    # the record: every key result.json's evaluation.nearest_neighbour held before the settings object
    assert settings.as_record(bank_rows={"k64": 2, "k32": 3}, on_cuda=False) == {
        "search": "ivf", "library": "faiss-cpu", "approximate": True, "centred": True, "bank_subsample": None,
        "bank_rows": {"k64": 2, "k32": 3}, "nlist": 16, "nprobe": 4}
    exact = NearestNeighbourSettings().as_record(bank_rows={"k64": 1, "k32": 1}, on_cuda=True, bank_subsample=0.5)
    assert exact["library"] == "torch" and exact["approximate"] is True and exact["bank_subsample"] == 0.5
    assert "nlist" not in exact and "hnsw_m" not in exact


def test_fit_without_an_anomaly_datamodule_is_one_error_naming_the_method():
    """A method reaches the data through AnomalyModule.data(): plain loaders are refused up front."""
    loader = torch.utils.data.DataLoader([{"image": torch.rand(3, 192, 192), "index": 0}], batch_size=1)
    with pytest.raises(RuntimeError, match="method patch_svdd .*datamodule=AnomalyDataModule"):
        quiet_trainer(1).fit(PatchSVDD(), train_dataloaders=loader)


def test_output_shapes_and_score_is_map_max():
    torch.manual_seed(0)
    model = PatchSVDDModel().eval()
    _randomize(model)
    train = torch.rand(3, 3, 256, 256)
    model.fit_mean([train[:2], train[2:]])
    torch.testing.assert_close(model.mean_image, train.mean(0))
    model.fit_bank([train])
    assert model.bank_64.shape == (3 * 13 * 13, 64) and model.bank_32.shape == (3 * 57 * 57, 64)
    out = model(torch.rand(2, 3, 256, 256))
    assert isinstance(out, AnomalyOutput)
    assert out.anomaly_map.shape == (2, 256, 256) and out.pred_score.shape == (2,)
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).max(dim=1).values)
    assert (out.anomaly_map >= 0).all()
    # a training image is its own nearest neighbour: zero map
    assert model(train[:1]).pred_score.item() < 1e-3 * out.pred_score.min().item()


def test_mean_image_survives_state_dict_roundtrip():
    model = PatchSVDDModel()
    model.fit_mean([torch.rand(2, 3, 200, 200)])
    fresh = PatchSVDDModel()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.mean_image, model.mean_image)
    assert "bank_32" not in model.state_dict()


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    module = PatchSVDD(optimizer=lambda params: torch.optim.Adam(params, lr=1e-3))
    # smooth structured images, so relative position is learnable
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 192), torch.linspace(0, 1, 192), indexing="ij")
    base = torch.stack([xx, yy, 0.5 * (xx + yy)])
    images = base.expand(4, -1, -1, -1).clone()
    module.model.fit_mean([images * 0.5])
    opt = module.configure_optimizers()
    losses = []
    for step in range(12):
        torch.manual_seed(100 + step % 2)  # the same two sample draws, alternately
        out = module.compute_losses(images)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    # same draws compared: step 10 vs 0 and 11 vs 1 (measured: ≈ 4.1 → 3.4 and 4.4 → 3.6)
    assert losses[-2] < losses[0] - 0.3 and losses[-1] < losses[1] - 0.3, losses


def test_augmented_training_uses_the_image_batches(tmp_path):
    """With data.augment every draw is a new image: Patch SVDD keeps no copy and trains on the batches."""
    import lightning as L

    from anobench.data import AnomalyDataModule

    L.seed_everything(0)
    datamodule = AnomalyDataModule(
        dataset="synthetic", category="tablet", root=str(tmp_path), image_size=192, train_batch_size=4,
        train_repeats=2, augment={"hflip": True}, synthetic=dict(SMALL_SYNTHETIC, image_size=192),
    )
    module = PatchSVDD()
    record = FitRecord()
    quiet_trainer(2, [record]).fit(module, datamodule=datamodule)
    assert record.batch_keys == [{"image", "index"}] * 2 and not datamodule.indices_only


# --- end to end on synthetic data (Lightning fit + test + evaluator) ----------------------------


def _fitted(tmp_path, category: str, max_steps: int):
    # K=64's position task needs >= 190 px; the paper uses 256. SMALL_SYNTHETIC: 12 train, 8 good + 16 defective test
    datamodule = synthetic_datamodule(tmp_path, category, image_size=256, train_repeats=100)
    fitted = fit_and_test(PatchSVDD, datamodule, max_steps=max_steps)
    module, record = fitted.module, fitted.fit
    # trained from its own normalised copy of the training set: the loader sent indices, not images;
    # at fit end the copy is freed and the datamodule sends images again
    assert record.batch_keys == [{"index"}] * max_steps
    assert module._train_set is None and not datamodule.indices_only
    # the fit really trained, logged finite losses and fitted the official normalisation mean
    assert record.changed(module, "model.")
    for key in ("loss", "loss_pos_64", "loss_pos_32", "loss_svdd_64", "loss_svdd_32"):
        assert torch.isfinite(record.logged[f"train/{key}"])
    train_images = datamodule.training_images()
    torch.testing.assert_close(module.model.mean_image, train_images.mean(dim=0))
    assert module.model.bank_32.shape[0] == len(train_images) * 57 * 57
    return fitted


@pytest.mark.slow
def test_patch_svdd_learns_on_synthetic(tmp_path):
    """End to end on a synthetic object (washer): fit 40 steps, build the banks, test, evaluate.

    What this does and does not show. Measured on CPU with this config (λ = 1e-3, lr 1e-4, batch 8),
    seeds 0/1/2: image AUROC 0.695 / 0.727 / 0.641, pixel AUROC 0.849 / 0.877 / 0.856. The same model
    *untrained* scores about the same: at a test-sized budget Patch SVDD's training has not started
    to matter (its position task leaves chance after ~200 steps of batch 32; the paper trains ~100k
    steps of batch 64 — see the method README, "Training dynamics"). So this test checks that a short
    fit runs and leaves a detector — dense embeddings, exact 1-NN against the training banks, map
    fusion and the shared evaluator — well above chance (0.5); `test_loss_decreases_on_fixed_batch`
    checks that the optimisation itself learns. Thresholds sit below the lowest measured seed.
    """
    metrics = _fitted(tmp_path, "washer", max_steps=40).metrics
    assert metrics["image_auroc"] >= 0.60, metrics
    assert metrics["pixel_auroc"] >= 0.78, metrics


@pytest.mark.slow
def test_patch_svdd_localizes_on_second_synthetic_object(tmp_path):
    """Same on the tablet, 40 steps. Pixel AUROC seeds 0/1/2: 0.884 / 0.869 / 0.897. Its image AUROC
    is below chance (0.27–0.38): the map's maximum falls on the object outline, whose pose varies
    between images, more than on the defects — a known weakness of max-of-map scoring with only 12
    training images, so only the pixel level is checked here."""
    metrics = _fitted(tmp_path, "tablet", max_steps=40).metrics
    assert metrics["pixel_auroc"] >= 0.80, metrics


# --- faiss nearest-neighbour index --------------------------------------------------------------
def _bank_and_queries(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    bank = torch.tanh(torch.randn(4000, 64, generator=gen))
    queries = torch.cat([torch.tanh(torch.randn(500, 64, generator=gen)), bank[:20] + 1e-4])
    return bank, queries


def test_faiss_exact_equals_brute_force_cdist():
    bank, queries = _bank_and_queries()
    ref = torch.cdist(queries, bank, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
    dist, index = NearestNeighbourIndex(bank, NearestNeighbourSettings("exact")).query(queries, return_index=True)
    torch.testing.assert_close(dist, ref.values, atol=1e-5, rtol=1e-5)
    assert (index == ref.indices).float().mean() > 0.99


def _clustered_bank_and_queries(n_bank: int = 30000):
    """A clustered bank; queries near bank rows (certifiable), far outliers and points between clusters (not)."""
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(200, 64, generator=g)
    bank = centres[torch.randint(0, 200, (n_bank,), generator=g)] + 0.3 * torch.randn(n_bank, 64, generator=g)
    near = bank[torch.randint(0, n_bank, (1500,), generator=g)] + 0.01 * torch.randn(1500, 64, generator=g)
    between = (centres[torch.randint(0, 200, (300,), generator=g)] + centres[torch.randint(0, 200, (300,), generator=g)]) / 2
    outliers = 3 * torch.randn(200, 64, generator=g)
    return bank.float(), torch.cat([near, between, outliers]).float()


def test_certified_search_is_exact_and_skips_the_full_scan_for_near_queries():
    bank, queries = _clustered_bank_and_queries()
    search = CertifiedExactSearch(bank.numpy(), nlist=256, nprobe=4)
    index = torch.from_numpy(search.search(queries.numpy()))
    reference = torch.cdist(queries.double(), bank.double()).min(dim=1)
    found = (queries.double() - bank.double()[index]).norm(dim=1)
    torch.testing.assert_close(found, reference.values, rtol=1e-12, atol=1e-12)  # the nearest row, every query
    assert 0.5 < search.certified_share < 1.0  # near queries proven from 4 of 256 cells; the others scanned
    # a wrong bound (no gap to unprobed cells) would certify the outliers too: they are not
    assert search.certified_share <= 1500 / len(queries) + 0.1


def test_exact_index_uses_the_certified_search_on_large_banks_with_the_same_answers():
    bank, queries = _clustered_bank_and_queries(CERTIFIED_MIN_ROWS)
    index = NearestNeighbourIndex(bank, NearestNeighbourSettings("exact"))
    assert index.certified is not None
    dist, rows = index.query(queries, return_index=True)
    reference = torch.cdist(queries.double(), bank.double()).min(dim=1)
    torch.testing.assert_close(dist.double(), reference.values, rtol=1e-5, atol=1e-6)
    record = index.settings.as_record(bank_rows={"k32": len(bank)}, on_cuda=False)
    assert record["approximate"] is False


def test_faiss_ivf_is_close_and_never_below_exact():
    bank, queries = _bank_and_queries()
    exact = NearestNeighbourIndex(bank, NearestNeighbourSettings("exact")).query(queries)
    ivf = NearestNeighbourIndex(bank, NearestNeighbourSettings("ivf", nlist=16, nprobe=4)).query(queries)
    assert (ivf >= exact - 1e-5).all()
    assert (ivf - exact).mean() < 0.05 * exact.mean()  # measured ≈ 1 % of the mean distance
    full = NearestNeighbourIndex(bank, NearestNeighbourSettings("ivf", nlist=16, nprobe=16)).query(queries)  # every cell = exact
    torch.testing.assert_close(full, exact, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="nn_search"):
        NearestNeighbourSettings("kdtree")


def test_faiss_hnsw_is_close_and_never_below_exact():
    bank, queries = _bank_and_queries()
    exact = NearestNeighbourIndex(bank, NearestNeighbourSettings("exact")).query(queries)
    hnsw = NearestNeighbourIndex(bank, NearestNeighbourSettings("hnsw", hnsw_m=8, ef_search=16)).query(queries)
    assert (hnsw >= exact - 1e-5).all()
    assert (hnsw - exact).mean() < 0.05 * exact.mean()
    wide = NearestNeighbourIndex(bank, NearestNeighbourSettings("hnsw", ef_search=256)).query(queries)  # more candidates: closer
    assert (wide - exact).mean() <= (hnsw - exact).mean()
    with pytest.raises(ConfigError, match="nn_hnsw_m"):
        NearestNeighbourSettings("hnsw", hnsw_m=1)


def test_approximate_search_falls_back_to_exact_where_it_finds_no_neighbour():
    """faiss answers -1 for a query whose probed cells hold nothing; those queries get the exact neighbour."""
    bank, queries, reference = _far_tight_bank()
    index = NearestNeighbourIndex(bank, NearestNeighbourSettings("ivf", nlist=8, nprobe=1))
    search, calls = index.index.search, []

    def search_with_gaps(x, k):
        calls.append(len(x))
        distances, found = search(x, k)
        found[::3] = -1
        return distances, found

    index.index.search = search_with_gaps
    dist, found = index.query(queries, return_index=True)
    assert calls == [len(queries)] and (found >= 0).all()
    assert (found[::3] == reference.indices[::3]).float().mean() > 0.98
    torch.testing.assert_close(dist[::3].double(), reference.values[::3], rtol=1e-3, atol=0)


def _far_tight_bank(seed: int = 0):
    """Embeddings like a trained encoder's on MVTec bottle: all near one point of norm ~0.3, nearest
    neighbours ~1e-4 apart, so ||q||² ≈ 0.09 dwarfs the squared distances in float32."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.tanh(torch.randn(64, generator=gen)) * 0.04
    bank = centre + 1e-5 * torch.randn(3000, 64, generator=gen)
    queries = centre + 1e-5 * torch.randn(300, 64, generator=gen)
    reference = torch.cdist(queries.double(), bank.double()).min(dim=1)
    return bank, queries, reference


@pytest.mark.parametrize("search", ["exact", "torch"])
def test_exact_search_finds_true_neighbour_far_from_origin(search):
    bank, queries, reference = _far_tight_bank()
    dist, index = NearestNeighbourIndex(bank, NearestNeighbourSettings(search)).query(queries, return_index=True)
    assert (index == reference.indices).float().mean() > 0.98
    torch.testing.assert_close(dist.double(), reference.values, rtol=1e-3, atol=0)
    # the same search without centring on the bank mean loses the neighbour to float32 cancellation
    _, uncentred = nearest_distances(queries, bank, return_index=True, center=False)
    assert (uncentred == reference.indices).float().mean() < 0.9
    assert (nearest_distances(queries, bank, return_index=True)[1] == reference.indices).float().mean() > 0.98


@pytest.mark.parametrize("search", ["exact", "ivf", "torch", "hnsw"])
def test_model_nn_search_modes_agree_and_are_recorded(search):
    torch.manual_seed(0)
    module = PatchSVDD(nn_search=search, nn_nlist=8, nn_nprobe=8)
    model = module.model.eval()
    _randomize(model)
    train = torch.rand(2, 3, 256, 256)
    model.fit_mean([train])
    model.fit_bank([train])
    test = torch.rand(1, 3, 256, 256)
    reference = PatchSVDDModel(nearest=NearestNeighbourSettings("torch")).eval()
    reference.load_state_dict(model.state_dict())
    reference.fit_bank([train])
    ours, exact = model(test).anomaly_map, reference(test).anomaly_map
    if search == "hnsw":  # approximate: never below exact, close on average
        assert (ours >= exact - 1e-5).all() and (ours - exact).mean() < 0.01 * exact.mean()
    else:
        torch.testing.assert_close(ours, exact, atol=1e-5, rtol=1e-5)
    info = module.extra_test_results()["nearest_neighbour"]
    assert info["search"] == search and info["approximate"] == (search in ("ivf", "hnsw"))
    if search == "hnsw":
        assert info["ef_search"] == 64 and info["hnsw_m"] == 16
    assert info["bank_rows"] == {"k64": 2 * 13 * 13, "k32": 2 * 57 * 57}


# --- mutation guards (issue 15 item 4): each test fails if that part of the method is removed -------
def _fitted_model(seed: int = 0, offset: float = 0.0):
    torch.manual_seed(seed)
    model = PatchSVDDModel().eval()
    _randomize(model)
    gen = torch.Generator().manual_seed(seed + 1)
    train = torch.rand(2, 3, 256, 256, generator=gen) * 0.5 + offset
    test = torch.rand(1, 3, 256, 256, generator=gen) * 0.5 + offset
    model.fit_mean([train])
    model.fit_bank([train])
    return model, test


def test_maps_are_fused_by_product_not_sum():
    """Official 'mult' fusion: map = M64 ⊙ M32, recomputed here from the patch scores."""
    model, test = _fitted_model()
    s64, s32 = model.patch_scores(test)
    m64 = distribute_scores(s64, (256, 256), 64, 16)
    m32 = distribute_scores(s32, (256, 256), 32, 4)
    out = model(test)
    torch.testing.assert_close(out.anomaly_map, m64 * m32)
    assert not torch.allclose(out.anomaly_map, m64 + m32, atol=1e-3)
    torch.testing.assert_close(out.pred_score, (m64 * m32).flatten(1).amax(dim=1))


def test_mean_normalisation_makes_scores_invariant_to_a_brightness_offset():
    """x − mean(train): shifting train and test images by the same constant changes nothing.

    Without the normalisation the (non-linear) encoder sees different inputs and the map changes.
    """
    model, test = _fitted_model(offset=0.0)
    shifted, test_shifted = _fitted_model(offset=0.4)
    torch.testing.assert_close(test_shifted, test + 0.4)
    torch.testing.assert_close(shifted(test_shifted).anomaly_map, model(test).anomaly_map, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.normalize(test), test - model.mean_image)
    # training sees normalised patches too: the same draws give the same losses on shifted images
    module = PatchSVDD()
    _randomize(module)
    images = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(5)) * 0.5
    module.model.fit_mean([images])
    torch.manual_seed(7)
    plain = module.compute_losses(images)
    module.model.fit_mean([images + 0.4])
    torch.manual_seed(7)
    moved = module.compute_losses(images + 0.4)
    for key in ("loss", "loss_pos_64", "loss_svdd_64", "loss_svdd_32"):
        torch.testing.assert_close(moved[key], plain[key], atol=1e-5, rtol=1e-4)


def test_svdd_term_is_in_the_loss_and_measures_pair_distance():
    """L = L_pos,64 + L_pos,32 + λ (L_svdd,64 + L_svdd,32), with the SVDD' terms > 0 and trained."""
    module = PatchSVDD(lambda_svdd=0.5)
    _randomize(module)
    images = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    module.model.fit_mean([images * 0.5])
    torch.manual_seed(11)
    out = module.compute_losses(images)
    svdd = out["loss_svdd_64"] + out["loss_svdd_32"]
    assert out["loss_svdd_64"].item() > 1e-3 and out["loss_svdd_32"].item() > 1e-3
    torch.testing.assert_close(out["loss"], out["loss_pos_64"] + out["loss_pos_32"] + 0.5 * svdd)
    module.lambda_svdd = 0.0
    torch.manual_seed(11)
    without = module.compute_losses(images)
    torch.testing.assert_close(out["loss"] - without["loss"], 0.5 * svdd)
    # a constant image: every patch equals its jittered copy, so the SVDD' distance is exactly 0
    flat_images = torch.full_like(images, 0.3)
    flat_images[:, 0] = 0.7
    module.model.fit_mean([flat_images * 0.5])  # x − mean is still constant per channel
    torch.manual_seed(11)
    flat = module.compute_losses(flat_images)
    assert flat["loss_svdd_64"].item() < 1e-6 and flat["loss_svdd_32"].item() < 1e-6
    # the term has a gradient into the shared small encoder
    module.lambda_svdd = 1.0
    module.model.fit_mean([images * 0.5])
    torch.manual_seed(11)
    module.zero_grad()
    only_svdd = module.compute_losses(images)
    (only_svdd["loss_svdd_64"] + only_svdd["loss_svdd_32"]).backward()
    assert module.model.encoder_small.convs[0].weight.grad.abs().sum() > 0
