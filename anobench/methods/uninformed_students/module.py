"""Lightning side of Uninformed Students: teacher preparation, held-out normals, student regression.

Fit:
1. `on_fit_start`: hold out a seeded part of the training images as normal validation images; load or
   distil the teachers (`teacher.py`, cached across categories); measure the per-channel mean/std of
   every teacher's dense descriptors over the remaining training images.
2. `training_step`: every student regresses the normalised teacher descriptors of every pixel
   (mean over pixels of ‖student − (teacher − μ)/σ‖²); held-out images never reach it (excluded from
   the datamodule's training set by index in `on_fit_start`). The teachers are frozen, so without
   augmentation each training image's normalised teacher descriptors are kept from step 1's statistics
   pass (`teacher_output_cache_mb`) and every step reads its crop instead of running the teacher.
3. `prepare_inference` (start of every test): mean/std of the regression error and of the predictive
   variance over all pixels of the held-out normal images, per scale — the standardisation of the score.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from anobench.methods.base import AnomalyModule, OptimizerFactory
from anobench.methods.registry import register_method
from anobench.methods.uninformed_students.teacher import BackboneSpec, TeacherConfig, prepare_teachers
from anobench.methods.uninformed_students.torch_model import (
    PATCH_SIZES,
    PatchNet,
    StudentTeacherModel,
    ensemble_dense,
    normalize_images,
    pad_images,
)
from anobench.metrics.pooling import MAP_POOLING


def held_out_indices(n_images: int, fraction: float, seed: int) -> list[int]:
    """Seeded choice of round(fraction·n) training images (at least 1, never all) kept for validation."""
    if fraction <= 0 or n_images < 2:
        return []
    count = min(n_images - 1, max(1, round(fraction * n_images)))
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:count].tolist())


class _RunningMoments:
    """Mean and std over many values, accumulated in float64 (per channel, or of scalars)."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | float = 0.0
        self.total_sq: torch.Tensor | float = 0.0

    def add(self, values: torch.Tensor, dims: tuple[int, ...]) -> None:
        values = values.double()
        total = values.sum(dim=dims)
        self.count += values.numel() // total.numel()  # values per accumulated entry
        self.total = self.total + total
        self.total_sq = self.total_sq + values.pow(2).sum(dim=dims)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean**2).clamp_min(0)
        return torch.as_tensor(mean).float(), torch.as_tensor(var).sqrt().float()


@register_method("uninformed_students")
class UninformedStudents(AnomalyModule):
    """Uninformed Students (Bergmann et al., CVPR 2020). See README.md next to this file."""

    image_score_pooling = MAP_POOLING  # the paper defines no image score

    def __init__(
        self,
        patch_sizes: list[int] | tuple[int, ...] = PATCH_SIZES,
        n_students: int = 3,
        descriptor_dim: int = 128,
        width: float = 1.0,
        val_fraction: float = 0.1,
        val_seed: int = 0,
        train_crop: int | None = None,
        teacher_output_cache_mb: int = 4096,
        backbone: dict[str, Any] | None = None,
        teacher: dict[str, Any] | None = None,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.backbone_spec = BackboneSpec.from_dict(backbone)
        self.teacher_config = TeacherConfig.from_dict(teacher)
        self.val_fraction = float(val_fraction)
        self.val_seed = int(val_seed)
        self.train_crop = None if train_crop is None else int(train_crop)
        self.width = float(width)
        if teacher_output_cache_mb < 0:
            raise ValueError(f"teacher_output_cache_mb must be >= 0 (0 = no cache), got {teacher_output_cache_mb}")
        self.teacher_output_cache_mb = int(teacher_output_cache_mb)
        # scale → training-set index → normalised teacher descriptors d×H×W of the whole image (fit only)
        self._teacher_targets: dict[int, dict[int, torch.Tensor]] = {}
        self.model = StudentTeacherModel(patch_sizes, n_students, descriptor_dim, width)  # students: run seed
        # each teacher starts from a seed of its own, the same for every category, run and scale list
        # (a random-init teacher is then one fixed network; a distilled one starts from it)
        for p in self.model.patch_sizes:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.teacher_config.seed * 1000 + p)
                fresh = PatchNet(p, descriptor_dim, width)
            self.model.teachers[str(p)].load_state_dict(fresh.state_dict())
        self.teacher_report: dict[int, dict[str, Any]] = {}

    # --- fit --------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        data = self.data()
        loader = data.inference_train_dataloader()
        n_images = len(loader.dataset)
        held_out = set(held_out_indices(n_images, self.val_fraction, self.val_seed))
        if held_out:
            data.exclude_from_training(held_out)  # by dataset index: no batch is ever empty

        def category_images() -> list[torch.Tensor]:
            return [img for b in loader for img, i in zip(b["image"], b["index"].tolist()) if i not in held_out]

        from anobench.backbones import build_backbone

        data_id = data.identity.key()  # dataset:category:root:image_size, what the teacher cache keys on
        teachers = {p: self.model.teachers[str(p)] for p in self.model.patch_sizes}
        self.teacher_report = prepare_teachers(
            teachers, self.model.descriptor_dim, self.width, self.backbone_spec, self.teacher_config,
            category_images, data_id, self.device, build_backbone)
        for p, info in self.teacher_report.items():
            print(f"uninformed_students: teacher p={p}: {info['source']}" + (f" ({info['path']})" if "path" in info else ""))
        keep_outputs = self._can_cache_teacher_outputs(bool(data.augment), data.image_size, n_images - len(held_out))
        self.fit_teacher_statistics(loader, exclude=held_out, keep_outputs=keep_outputs)

    def _can_cache_teacher_outputs(self, augmented: bool, image_size: int, n_images: int) -> bool:
        """Whether the frozen teachers' training targets can be computed once: no augmentation (the
        targets would change per draw) and the whole-image descriptors fit in teacher_output_cache_mb."""
        if augmented or self.teacher_output_cache_mb == 0:
            return False
        size = int(image_size)
        needed_mb = n_images * len(self.model.patch_sizes) * self.model.descriptor_dim * size * size * 4 / 2**20
        if needed_mb > self.teacher_output_cache_mb:
            print(f"uninformed_students: teacher outputs not cached (need {needed_mb:.0f} MB > "
                  f"teacher_output_cache_mb={self.teacher_output_cache_mb}); the teachers run every step")
            return False
        return True

    def on_fit_end(self) -> None:
        self._teacher_targets = {}  # free the training targets before testing

    @torch.no_grad()
    def fit_teacher_statistics(self, loader: DataLoader, exclude: set[int] = frozenset(),
                               keep_outputs: bool = False) -> None:
        """Per-channel mean/std of each teacher's dense descriptors over the training images; with
        keep_outputs, also keep every image's descriptors, normalised, as its training targets."""
        moments = {p: _RunningMoments() for p in self.model.patch_sizes}
        kept: dict[int, dict[int, torch.Tensor]] = {p: {} for p in self.model.patch_sizes}
        for batch in loader:
            ids = batch["index"].tolist()
            keep = [k for k, i in enumerate(ids) if i not in exclude]
            if not keep:
                continue
            x = normalize_images(batch["image"][keep].to(self.device))
            indices = [ids[k] for k in keep]
            for p in self.model.patch_sizes:
                dense = self.model.teachers[str(p)].dense(x)
                moments[p].add(dense, dims=(0, 2, 3))
                if keep_outputs:
                    kept[p].update(zip(indices, dense.unbind(0)))
        for k, p in enumerate(self.model.patch_sizes):
            mean, std = moments[p].result()
            self.model.teacher_mean[k] = mean.to(self.device)
            self.model.teacher_std[k] = std.clamp_min(1e-6).to(self.device)
            for target in kept[p].values():  # in place: no second copy of the cache
                target.sub_(self.model.teacher_mean[k].view(-1, 1, 1)).div_(self.model.teacher_std[k].view(-1, 1, 1))
        self._teacher_targets = kept if keep_outputs else {}
        self.model.fitted[0] = True

    def _training_view(self, x: torch.Tensor, scale: int) -> tuple[torch.Tensor, bool, tuple[int, int, int] | None]:
        """The input the students see this step at `scale`: the whole (normalised) image, or with
        `train_crop` a random crop of crop×crop output pixels plus its real p−1 context (the same
        per-pixel targets as the whole image, at a fraction of the cost). Returns (input, padding,
        window): window = (top, left, crop) of the output pixels in whole-image coordinates, or None."""
        size = min(x.shape[-2:])
        if self.train_crop is None or self.train_crop >= size:
            return x, True, None
        half = (scale - 1) // 2
        padded = pad_images(x, half)  # the reflect padding that dense() uses on whole images
        top, left = (int(v) for v in torch.randint(0, size - self.train_crop + 1, (2,)))
        extent = self.train_crop + scale - 1
        return padded[..., top:top + extent, left:left + extent], False, (top, left, self.train_crop)

    def _cached_targets(self, scale: int, indices: list[int] | None,
                        window: tuple[int, int, int] | None) -> torch.Tensor | None:
        """The normalised teacher descriptors of these training images (in the window), from the cache."""
        cache = self._teacher_targets.get(scale)
        if not cache or indices is None or any(i not in cache for i in indices):
            return None
        targets = [cache[i] for i in indices]
        if window is not None:
            top, left, crop = window
            targets = [t[:, top:top + crop, left:left + crop] for t in targets]
        return torch.stack(targets)

    def compute_losses(self, images: torch.Tensor, indices: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Mean over students and pixels of ‖student − normalised teacher‖², per scale and in total.
        `indices` (training-set indices of the images) lets the targets come from the teacher cache."""
        x = normalize_images(images)
        out: dict[str, torch.Tensor] = {}
        for k, p in enumerate(self.model.patch_sizes):
            view, padding, window = self._training_view(x, p)
            target = self._cached_targets(p, indices, window)
            if target is None:
                with torch.no_grad():
                    teacher = self.model.teachers[str(p)].dense(view, padding=padding)
                    target = (teacher - self.model.teacher_mean[k].view(1, -1, 1, 1)) / self.model.teacher_std[k].view(1, -1, 1, 1)
            students = ensemble_dense(self.model.students[str(p)], view, padding=padding)
            out[f"loss_p{p}"] = (students - target.unsqueeze(0)).pow(2).sum(dim=2).mean()
        out["loss"] = torch.stack([out[f"loss_p{p}"] for p in self.model.patch_sizes]).sum()
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = batch["image"]  # held-out images were excluded from the training set in on_fit_start
        indices = batch["index"].tolist() if "index" in batch else None
        out = self.compute_losses(images, indices)
        for name, value in out.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=images.shape[0])
        return out["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.model.students.parameters())

    # --- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_inference(self, train_loader: DataLoader) -> None:
        """Standardisation statistics of error and variance from the held-out normal training images
        (all training images when none are held out), per scale."""
        n_images = len(train_loader.dataset)
        held_out = set(held_out_indices(n_images, self.val_fraction, self.val_seed))
        if not bool(self.model.fitted[0]):  # e.g. evaluating a model that was never fitted
            self.fit_teacher_statistics(train_loader, exclude=held_out)
        errors = {p: _RunningMoments() for p in self.model.patch_sizes}
        variances = {p: _RunningMoments() for p in self.model.patch_sizes}
        for batch in train_loader:
            keep = [k for k, i in enumerate(batch["index"].tolist()) if not held_out or i in held_out]
            if not keep:
                continue
            for p, (e, v) in self.model.error_and_variance(batch["image"][keep].to(self.device)).items():
                errors[p].add(e, dims=tuple(range(e.ndim)))
                variances[p].add(v, dims=tuple(range(v.ndim)))
        for k, p in enumerate(self.model.patch_sizes):
            self.model.error_stats[k] = torch.stack(errors[p].result()).to(self.device)
            self.model.variance_stats[k] = torch.stack(variances[p].result()).to(self.device)


__all__ = ["UninformedStudents", "held_out_indices"]
