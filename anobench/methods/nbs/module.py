"""Lightning side of Neural Batch Sampling: the AE / predictor / sampler training loop and the
semi-supervised evaluation (labelled test images are left out of the metrics).

One training step (= one AE step, so ``trainer.global_step`` counts AE steps):

1. The batch: the datamodule's training images plus ``inspected_patches`` random *tracked* images
   (the test images being inspected and the generated labelled images — transductive, as in the
   paper: the AE also trains on the images it inspects; ``train_on_inspected: false`` turns that off).
2. The sampler: for each image the policy reads a state map (current relative loss, profile
   fluctuation) and samples one patch location from a categorical distribution over a grid.
3. One SGD step of the AE on those patches (MSE).
4. Every ``profile_every`` steps: the AE's loss map of every tracked image is pushed into the FIFO
   of loss profiles; the predictor takes ``predictor_steps`` Adam steps on the labelled images'
   profiles vs their masks; the reward r = −(predictor loss on the labelled images) updates the
   sampler by REINFORCE with an exponential-moving-average baseline (advantage normalised by a running
   std) and an entropy bonus.

After the last step the predictor is refitted for ``final_predictor_steps`` on the final profiles,
which are the ones inference reads.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributions import Categorical

from anobench.data.datamodule import AnomalyDataModule
from anobench.methods.base import AnomalyModule, OptimizerFactory, TestPredictions
from anobench.methods.nbs.labelled import SOURCES, build_labelled_set
from anobench.methods.nbs.torch_model import NBSModel, sampler_state
from anobench.methods.registry import register_method
from anobench.metrics.pooling import MAP_POOLING

SAMPLERS = ("learned", "uniform")


def _cell_fractions(mask: np.ndarray | torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """Bool mask (any resolution) → fraction of defective pixels in each of h×w cells."""
    m = torch.as_tensor(np.asarray(mask), dtype=torch.float32)[None, None]
    return F.adaptive_avg_pool2d(m, cells)[0, 0]


class RewardBaseline:
    """Trend-following REINFORCE baseline: the reward rises as the predictor learns (non-stationary),
    so a plain EMA lags behind it and nearly every advantage is positive. This baseline predicts the next
    reward as level + trend (Holt's double exponential smoothing, both with `momentum`), so a steadily
    rising reward gives advantages centred on 0; the advantage is divided by a running RMS of past ones.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.level: float | None = None
        self.trend = 0.0
        self.var = 1.0

    def advantage(self, reward: float) -> tuple[float, float]:
        """(advantage = reward − predicted reward, advantage / running RMS); then folds `reward` in."""
        m = self.momentum
        if self.level is None:
            self.level = reward
            return 0.0, 0.0
        predicted = self.level + self.trend
        advantage = reward - predicted
        self.var = m * self.var + (1 - m) * advantage**2
        level = m * predicted + (1 - m) * reward
        self.trend = m * self.trend + (1 - m) * (level - self.level)
        self.level = level
        return advantage, advantage / (self.var**0.5 + 1e-8)


@register_method("nbs")
class NeuralBatchSampling(AnomalyModule):
    """Neural Batch Sampling (Chu & Kitani, ECCV 2020), semi-supervised. See README.md next to this file."""

    image_score_pooling = MAP_POOLING  # the paper defines no image score

    def __init__(
        self,
        patch_size: int = 32,
        patch_stride: int = 16,
        cell_size: int = 4,
        profile_length: int = 30,
        profile_every: int = 2,
        ae_channels: list[int] | tuple[int, ...] = (16, 32, 16),
        inspected_patches: int = 8,
        train_on_inspected: bool = True,
        sampler: str = "learned",
        policy_width: int = 16,
        policy_lr: float = 1e-2,
        entropy_weight: float = 1e-2,
        baseline_momentum: float = 0.9,
        predictor_width: int = 16,
        predictor_lr: float = 1e-3,
        predictor_weight_decay: float = 1e-2,
        predictor_steps: int = 1,
        final_predictor_steps: int = 0,
        pos_weight_cap: float = 100.0,
        image_loss_weight: float = 0.0,
        labelled_source: str = "test_split",
        labelled_k: int = 1,
        labelled_normal: int = 2,
        labelled_seed: int = 0,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer or partial(torch.optim.Adam, lr=3e-3))
        self.save_hyperparameters(ignore=["optimizer"])
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if labelled_source not in SOURCES:
            raise ValueError(f"labelled_source={labelled_source!r}; expected one of {', '.join(SOURCES)}")
        if profile_length < 2 or profile_every < 1:
            raise ValueError("profile_length must be >= 2 and profile_every >= 1")
        self.automatic_optimization = False  # three networks, three update rules
        self.profile_every = profile_every
        self.inspected_patches = inspected_patches if train_on_inspected else 0
        self.sampler = sampler
        self.policy_lr = policy_lr
        self.entropy_weight = entropy_weight
        self.baseline_momentum = baseline_momentum
        self.predictor_lr = predictor_lr
        self.predictor_weight_decay = predictor_weight_decay
        self.predictor_steps = predictor_steps
        self.final_predictor_steps = final_predictor_steps
        if pos_weight_cap < 1 or image_loss_weight < 0:
            raise ValueError(f"pos_weight_cap={pos_weight_cap} must be >= 1 and image_loss_weight={image_loss_weight} >= 0")
        self.pos_weight_cap = pos_weight_cap
        self.image_loss_weight = image_loss_weight
        self.labelled_source = labelled_source
        self.labelled_k = labelled_k
        self.labelled_normal = labelled_normal
        self.labelled_seed = labelled_seed
        self.model = NBSModel(
            ae_channels=tuple(ae_channels), profile_length=profile_length, cell_size=cell_size,
            patch_size=patch_size, patch_stride=patch_stride, predictor_width=predictor_width,
            policy_width=policy_width,
        )
        # test rows that were labelled (left out of evaluation); saved with the checkpoint
        self.register_buffer("excluded_test_indices", torch.zeros(0, dtype=torch.long))
        self.labelled_info: dict[str, Any] = {}
        # training-only state (not needed for inference, not saved)
        self._pool: torch.Tensor | None = None  # tracked images, buffer row order
        self._labelled_rows = torch.zeros(0, dtype=torch.long)
        self._labelled_masks = torch.zeros(0)
        self._predictor_opt: torch.optim.Optimizer | None = None
        self._policy_opt: torch.optim.Optimizer | None = None
        self._log_probs: list[torch.Tensor] = []
        self._entropies: list[torch.Tensor] = []
        self._baseline = RewardBaseline(baseline_momentum)

    # --- setup ----------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.setup_tracking(self.data())  # it tracks the loss of the test images

    def setup_tracking(self, datamodule: AnomalyDataModule) -> None:
        """Choose the labelled set, load the tracked images and record the first loss profile entry."""
        batches = list(datamodule.test_dataloader())
        test_images = torch.cat([b["image"] for b in batches])
        order = torch.cat([torch.as_tensor(b["index"]).reshape(-1) for b in batches])
        if not torch.equal(order, torch.arange(len(order))):  # buffer row i must be test index i
            raise RuntimeError("NBS expects test_dataloader() in test-index order")
        train_images = None
        if self.labelled_source == "synthetic" or datamodule.dataset != "synthetic":
            train_images = datamodule.training_images()
        labelled = build_labelled_set(datamodule, self.labelled_source, self.labelled_k, self.labelled_normal,
                                      self.labelled_seed, train_images)
        if "fallback" in labelled.info:
            warnings.warn(f"NBS labelled set: {labelled.info['fallback']}", stacklevel=2)
        size = test_images.shape[-1]
        cells = (size // self.model.cell_size, size // self.model.cell_size)
        self.model.location_grid(size)  # validate the image size early
        if labelled.source == "test_split":
            pool = test_images
            rows = torch.tensor(labelled.test_indices, dtype=torch.long)
            masks = torch.stack([_cell_fractions(datamodule.load_mask(i), cells) for i in labelled.test_indices])
        else:
            assert labelled.images is not None and labelled.masks is not None
            pool = torch.cat([test_images, labelled.images])
            rows = torch.arange(len(test_images), len(pool))
            masks = torch.stack([_cell_fractions(m, cells) for m in labelled.masks])
        self.excluded_test_indices = torch.tensor(labelled.test_indices, dtype=torch.long, device=self.device)
        self.labelled_info = labelled.info
        self._pool = pool.to(self.device)
        self._labelled_rows = rows.to(self.device)
        self._labelled_masks = masks.to(self.device)
        self.model.buffer.reset(self._pool, self.model.cell_size)
        self.model.buffer.push(self.model.loss_maps(self._pool))
        self._predictor_opt = torch.optim.AdamW(self.model.predictor.parameters(), lr=self.predictor_lr,
                                               weight_decay=self.predictor_weight_decay)
        self._policy_opt = torch.optim.Adam(self.model.policy.parameters(), lr=self.policy_lr)
        self._log_probs, self._entropies, self._baseline = [], [], RewardBaseline(self.baseline_momentum)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The AE's optimizer (Adam by default, see README); predictor and sampler have their own."""
        return self.optimizer_factory(self.model.autoencoder.parameters())

    # --- sampler --------------------------------------------------------------------------------
    def sample_locations(self, images: torch.Tensor, tracked_rows: torch.Tensor | None, n_untracked: int) -> torch.Tensor:
        """One patch location per image: the policy's sample (log-prob kept for REINFORCE) or uniform.

        The first `n_untracked` images have no profile (training images); the rest are tracked rows.
        """
        n_locations = self.model.location_grid(images.shape[-1]) ** 2
        if self.sampler == "uniform":
            return torch.randint(n_locations, (images.shape[0],), device=images.device)
        parts = []
        if n_untracked:  # training images: their current loss, measured now
            parts.append(sampler_state(self.model.loss_maps(images[:n_untracked]), None))
        if tracked_rows is not None and len(tracked_rows):  # tracked images: the newest profile entry
            profiles = self.model.buffer.read(tracked_rows)
            parts.append(sampler_state(profiles[:, -1], profiles))
        dist = Categorical(logits=self.model.policy(torch.cat(parts)))
        locations = dist.sample()
        if torch.is_grad_enabled():
            self._log_probs.append(dist.log_prob(locations).mean())
            self._entropies.append(dist.entropy().mean())
        return locations

    def ae_batch(self, train_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The AE's patches for one step (training images + random tracked images) and their locations."""
        rows = None
        images = train_images
        if self.inspected_patches and self._pool is not None:
            rows = torch.randint(self._pool.shape[0], (self.inspected_patches,), device=train_images.device)
            images = torch.cat([train_images, self._pool[rows]])
        locations = self.sample_locations(images, rows, train_images.shape[0])
        return self.model.crop(images, locations), locations

    # --- predictor ------------------------------------------------------------------------------
    def predictor_loss(self, augment: bool = False) -> torch.Tensor:
        """Predictor loss on the labelled images' current profiles: class-balanced per-cell BCE, plus
        (``image_loss_weight`` > 0) a BCE pushing each labelled good image's pooled logit (the image score's pooling)
        towards normal (README deviation 9)."""
        profiles = self.model.buffer.read(self._labelled_rows)
        targets = self._labelled_masks
        if augment:  # the labelled set is tiny: random flips / 90° turns of profile and mask together
            k = int(torch.randint(4, ()))
            profiles, targets = torch.rot90(profiles, k, (-2, -1)), torch.rot90(targets, k, (-2, -1))
            if torch.rand(()) < 0.5:
                profiles, targets = profiles.flip(-1), targets.flip(-1)
        logits = self.model.predictor(profiles)
        positive = targets.sum()
        cap = self.pos_weight_cap
        pos_weight = ((targets.numel() - positive) / positive).clamp(1.0, cap) if positive > 0 else targets.new_tensor(1.0)
        loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)
        if self.image_loss_weight > 0:
            normal = targets.flatten(1).amax(dim=1) == 0
            if normal.any():  # the hottest cells of the labelled good images, pushed towards "normal"
                tails = self.model.image_scores(logits[normal])
                loss = loss + self.image_loss_weight * F.binary_cross_entropy_with_logits(tails, torch.zeros_like(tails))
        return loss

    def _fit_predictor(self, steps: int) -> float:
        loss = torch.zeros(())
        assert self._predictor_opt is not None
        for _ in range(steps):
            loss = self.predictor_loss(augment=True)
            self._predictor_opt.zero_grad()
            loss.backward()
            self._predictor_opt.step()
        return float(loss.detach())

    # --- sampler update -------------------------------------------------------------------------
    def _update_policy(self) -> dict[str, float]:
        """REINFORCE: reward = −predictor loss on the labelled images, EMA baseline, entropy bonus."""
        with torch.no_grad():
            reward = -float(self.predictor_loss(augment=False))
        advantage, scaled = self._baseline.advantage(reward)
        logs = {"reward": reward, "advantage": advantage}
        if self.sampler == "learned" and self._log_probs:
            assert self._policy_opt is not None
            log_prob = torch.stack(self._log_probs).mean()
            entropy = torch.stack(self._entropies).mean()
            loss = -scaled * log_prob - self.entropy_weight * entropy
            self._policy_opt.zero_grad()
            loss.backward()
            self._policy_opt.step()
            logs["policy_entropy"] = float(entropy.detach())  # uniform over n locations = log n
        self._log_probs, self._entropies = [], []
        return logs

    # --- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self._pool is None:
            raise RuntimeError("NBS training needs on_fit_start (trainer.fit with a datamodule)")
        ae_opt = self.optimizers()
        patches, locations = self.ae_batch(batch["image"])
        loss = F.mse_loss(self.model.autoencoder(patches), patches)
        ae_opt.zero_grad()
        self.manual_backward(loss)
        ae_opt.step()
        logs = {"ae_loss": float(loss.detach())}
        if self.trainer.global_step % self.profile_every == 0:
            self.model.buffer.push(self.model.loss_maps(self._pool))
            logs["predictor_loss"] = self._fit_predictor(self.predictor_steps)
            logs.update(self._update_policy())
        for name, value in logs.items():
            self.log(f"train/{name}", value, prog_bar=name == "ae_loss", batch_size=patches.shape[0])
        return loss.detach()

    def on_train_end(self) -> None:
        """Refit the predictor on the final profiles (the ones inference reads); free the images."""
        if self._pool is not None and self.final_predictor_steps > 0:
            with torch.enable_grad():
                self._fit_predictor(self.final_predictor_steps)
        self._pool = None
        self._log_probs, self._entropies = [], []

    # --- evaluation without the labelled images -------------------------------------------------
    def evaluation_exclusions(self) -> list[int]:
        """The labelled test images: the method saw their labels, so they are never scored."""
        return sorted(self.excluded_test_indices.tolist())

    def extra_test_results(self, predictions: TestPredictions) -> dict[str, Any]:
        """What the result records about the semi-supervised protocol."""
        return {
            "supervision": "semi_supervised",
            "labelled_set": dict(self.labelled_info),
            "excluded_test_indices": self.evaluation_exclusions(),
            "n_test_images_total": len(predictions.labels),
        }

    # --- checkpoint: the labelled-set record travels inside the state_dict ------------------------
    # (`anobench eval` restores with load_state_dict alone, so no on_load_checkpoint hook is relied on)
    def get_extra_state(self) -> dict[str, Any]:
        return {"labelled_set": self.labelled_info}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.labelled_info = dict((state or {}).get("labelled_set", {}))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "excluded_test_indices"  # its length is only known after fitting
        if key in state_dict:
            self.excluded_test_indices = torch.zeros_like(state_dict[key], device=self.excluded_test_indices.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
