"""Lightning side of Patch SVDD: losses, pair sampling, normalisation mean and banks.

Training step (official main_train.py): for every image of the batch draw one pair of each kind —
position pair and SVDD' pair, for K = 64 (hierarchical encoder) and K = 32 (its inner small
encoder) — and minimise

    L = L_pos,64 + L_pos,32 + λ · (L_svdd,64 + L_svdd,32)

with L_pos the cross-entropy of the 8-way relative-position classifier (one per K) and L_svdd the
mean L2 distance between the embeddings of a patch and its jittered copy. As in the official code,
only position-pair patches get the per-patch RGB shift N(0, rgb_shift_std) and pixel noise
N(0, pixel_noise_std); SVDD' patches are clean crops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from anobench.methods.base import AnomalyModule, OptimizerFactory, TestPredictions
from anobench.methods.patch_svdd.nearest import NearestNeighbourSettings
from anobench.methods.patch_svdd.released import RELEASED_SOURCE, load_released_encoder, paper_evaluation_deviations
from anobench.methods.patch_svdd.sampling import (
    check_image_size,
    crop_patches,
    sample_position_pairs,
    sample_svdd_pairs,
)
from anobench.methods.patch_svdd.torch_model import BIG_K, SMALL_K, PatchSVDDModel, PositionClassifier
from anobench.methods.registry import register_method


def _images(loader: DataLoader):
    for batch in loader:
        yield batch["image"] if isinstance(batch, dict) else batch


@register_method("patch_svdd")
class PatchSVDD(AnomalyModule):
    """Patch SVDD (Yi & Yoon, ACCV 2020). See README.md next to this file."""

    inference_precision = "float32"  # torch_model._float32: autocast and TF32 off whatever trainer.precision

    def __init__(
        self,
        embedding_dim: int = 64,
        lambda_svdd: float = 1e-3,
        rgb_shift_std: float = 0.02,
        pixel_noise_std: float = 0.02,
        bank_subsample: float | int | None = None,
        nn_chunk_size: int = 4096,
        nn_search: str = "exact",
        nn_nlist: int = 1024,
        nn_nprobe: int = 8,
        nn_hnsw_m: int = 16,
        nn_ef_construction: int = 40,
        nn_ef_search: int = 64,
        encoder_cpu_chunk: int | None = 128,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.lambda_svdd = lambda_svdd
        self.rgb_shift_std = rgb_shift_std
        self.pixel_noise_std = pixel_noise_std
        self.bank_subsample = bank_subsample
        # the seven nn_* config keys, validated once, as the one object the model and its searches use
        self.nearest = NearestNeighbourSettings(
            search=nn_search, chunk_size=nn_chunk_size, nlist=nn_nlist, nprobe=nn_nprobe, hnsw_m=nn_hnsw_m,
            ef_construction=nn_ef_construction, ef_search=nn_ef_search,
        )
        self.model = PatchSVDDModel(embedding_dim=embedding_dim, nearest=self.nearest,
                                    encoder_cpu_chunk=encoder_cpu_chunk)
        self.classifier_64 = PositionClassifier(embedding_dim)
        self.classifier_32 = PositionClassifier(embedding_dim)
        self._train_set: torch.Tensor | None = None  # normalised training images while fitting (on_fit_start)

    # --- normalisation mean and the training set ---------------------------------------------
    def on_fit_start(self) -> None:
        """Fit the mean image and, without augmentation, keep the normalised training set as one tensor
        on the training device: each step then crops its patches straight from it by batch["index"]
        (the datamodule stops loading images), instead of collating and normalising 64 whole images."""
        data = self.data()
        images = data.training_images().to(self.device)
        self.model.fit_mean(images.split(32))  # float64 sums, a few images at a time
        self._train_set = None
        if not data.augment:
            self._train_set = images.sub_(self.model.mean_image)  # = model.normalize(images), in place
            data.train_indices_only()

    def on_fit_end(self) -> None:
        if self._train_set is not None:
            self._train_set = None  # ~0.8 MB per 256² training image; the banks are built from the loader
            self.data().train_indices_only(False)  # the next fit (maybe of another method) gets images

    # --- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if "image" in batch:  # augmented training images: no copy kept, the batches are the training data
            return super().training_step(batch, batch_idx)
        if self._train_set is None:
            raise RuntimeError("PatchSVDD got a batch without images but holds no training set (on_fit_start not run)")
        out = self.losses_from_normalised(self._train_set, batch["index"])
        self.log_losses(out, batch_size=batch["index"].shape[0])
        return out["loss"]

    def _perturb(self, patches: torch.Tensor) -> torch.Tensor:
        n, c = patches.shape[:2]
        shift = torch.randn(n, c, 1, 1, device=patches.device, dtype=patches.dtype) * self.rgb_shift_std
        noise = torch.randn(patches.shape, device=patches.device, dtype=patches.dtype) * self.pixel_noise_std
        return patches + shift + noise

    def compute_losses(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """All loss terms for one batch of [0, 1] images (B×3×H×W); 'loss' is the total."""
        index = torch.arange(images.shape[0], device=images.device)
        return self.losses_from_normalised(self.model.normalize(images), index)

    def losses_from_normalised(self, images: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The losses for the batch of images ``images[index]``, `images` already normalised (N×3×H×W).

        Patches are cropped from `images` directly, so `images` can be the whole training set."""
        n = index.shape[0]
        height, width = images.shape[-2:]
        check_image_size(height, width, BIG_K)
        classifiers = {BIG_K: self.classifier_64, SMALL_K: self.classifier_32}
        patches, labels = {}, {}
        for k in (BIG_K, SMALL_K):
            c1, c2, labels[k] = sample_position_pairs(n, height, width, k)
            s1, s2 = sample_svdd_pairs(n, height, width, k)
            crops = [crop_patches(images, corners, k, index) for corners in (c1, c2, s1, s2)]
            patches[k] = torch.cat([self._perturb(crops[0]), self._perturb(crops[1]), crops[2], crops[3]])
        # one pass of the shared K = 32 encoder for both K (the K = 64 sub-patches and the K = 32 patches)
        embeddings = dict(zip((BIG_K, SMALL_K), self.model.encoder.forward_with_small(patches[BIG_K], patches[SMALL_K])))
        out: dict[str, torch.Tensor] = {}
        for k in (BIG_K, SMALL_K):
            h_pos1, h_pos2, h_svdd1, h_svdd2 = embeddings[k].split(n, dim=0)
            logits = classifiers[k](h_pos1, h_pos2)
            target = labels[k].to(logits.device)
            out[f"loss_pos_{k}"] = F.cross_entropy(logits, target)
            out[f"acc_pos_{k}"] = (logits.argmax(dim=1) == target).float().mean()
            out[f"loss_svdd_{k}"] = (h_svdd1 - h_svdd2).flatten(1).norm(dim=1).mean()
        out["loss"] = (
            out[f"loss_pos_{BIG_K}"]
            + out[f"loss_pos_{SMALL_K}"]
            + self.lambda_svdd * (out[f"loss_svdd_{BIG_K}"] + out[f"loss_svdd_{SMALL_K}"])
        )
        return out

    # --- the authors' released weights (released.py; `anobench eval ... weights.released=<enchier.pkl>`) ----
    released_weights_source = RELEASED_SOURCE

    @staticmethod
    def released_weights_deviations(method_cfg: dict) -> list[str]:
        """What a resolved method config changes from the authors' evaluation (empty: evaluated as the paper)."""
        return paper_evaluation_deviations(method_cfg)

    def load_released_weights(self, path) -> None:
        """The authors' trained hierarchical encoder instead of training; the mean image and the banks are
        then built from the category's training images at test start (`prepare_inference`), as theirs are."""
        load_released_encoder(self.model.encoder, path)

    # --- inference ----------------------------------------------------------------------------
    def prepare_inference(self, train_loader: DataLoader) -> None:
        """Dense training-patch embedding banks (K = 64 and K = 32); the mean too if never fitted."""
        if not self.model.has_mean:  # e.g. evaluating an untrained model
            self.model.fit_mean(_images(train_loader))
        self.model.fit_bank(_images(train_loader), subsample=self.bank_subsample)

    def extra_test_results(self, predictions: TestPredictions | None = None) -> dict:
        """result.json evaluation.nearest_neighbour: how the 1-NN search was done."""
        m = self.model
        record = self.nearest.as_record(
            bank_rows={"k64": int(m.bank_64.shape[0]), "k32": int(m.bank_32.shape[0])},
            on_cuda=m.bank_32.is_cuda, bank_subsample=self.bank_subsample)
        certified = {name.removeprefix("bank_"): round(index.certified.certified_share, 4)
                     for name, index in m.nn_indexes().items()
                     if index.certified is not None and index.certified.certified_share is not None}
        if certified:  # exact search over a large bank: the share of queries proven from a few k-means cells
            record["certified_share"] = certified
        return {"nearest_neighbour": record}
