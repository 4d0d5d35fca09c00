"""Teacher preparation: distil a pretrained backbone into the patch networks, cached across categories.

Paper (§3.1): the teacher T̂ is a patch network whose d-dimensional descriptor, passed through a
linear decoder, regresses the descriptor of a pretrained ResNet-18 for the same patch (knowledge
distillation, L_k), while the correlation between descriptor dimensions is pushed to zero over each
minibatch (compactness, L_c); an optional triplet loss (L_m) makes descriptors of a patch and a
slightly perturbed copy closer than those of a patch from another image. It is trained once, on
patches of natural images (ImageNet), and reused for every category.

Here the same teacher is trained at most once per configuration: the weights are cached in
`<cache_dir>/us_teacher_p<p>_<key>.pt`, where the key hashes everything that determines them (receptive
field, widths, backbone and its weights, distillation data and settings, seed). A second category with
the same settings loads the file; a different setting gets a different key. Files are written
atomically under a lock, so parallel sweep jobs train a teacher once and never read half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from anobench.errors import ConfigError
from anobench.io import atomic_write, folder_lock
from anobench.methods.uninformed_students.torch_model import PatchNet, normalize_images

CACHE_FORMAT = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DISTILL_SOURCES = ("category", "imagefolder")


@dataclass
class TeacherConfig:
    """How teachers are obtained. `distill_data`: 'category' (random patches of the category's own
    training images) or 'imagefolder' (patches of any folder of natural images, as the paper's ImageNet)."""

    distill_data: str = "category"
    image_folder: str | None = None
    image_folder_size: int = 256     # images of the folder are resized to this side before cropping
    image_folder_max_images: int | None = 10_000  # seeded subset kept in memory (uint8); None: all
    steps: int = 50_000              # paper: 50k iterations [U]
    batch_size: int = 64             # paper: 64 [U]
    lr: float = 2e-4                 # paper / reimplementations: Adam 2e-4
    weight_decay: float = 1e-5
    lambda_k: float = 1.0            # knowledge distillation
    lambda_c: float = 1.0            # descriptor compactness
    lambda_m: float = 0.0            # metric learning (triplet)
    triplet_margin: float = 1.0
    target_input_size: int | None = None  # resize patches for the backbone (None: feed the p×p patch)
    seed: int = 0
    cache_dir: str | None = None
    log_every: int = 0               # print the losses every n steps (0: never)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "TeacherConfig":
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"method.module.teacher has unknown key(s) {', '.join(unknown)}; "
                              f"expected some of: {', '.join(sorted(known))}")
        config = cls(**values)
        if config.distill_data not in DISTILL_SOURCES:
            raise ConfigError(f"method.module.teacher.distill_data={config.distill_data!r}: expected one of "
                              f"{', '.join(DISTILL_SOURCES)}")
        return config


@dataclass
class BackboneSpec:
    """The global `backbone` config group: which torchvision network the teacher distils (None: no
    distillation, the teacher is a seeded randomly initialised patch network)."""

    name: str = "none"
    arch: str | None = None
    pretrained: bool = False
    weights_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "BackboneSpec":
        values = dict(values or {})
        known = {k: values.pop(k) for k in ("name", "arch", "pretrained", "weights_path") if k in values}
        return cls(**known, extra=values)


def teacher_key(patch_size: int, descriptor_dim: int, width: float, backbone: BackboneSpec,
                config: TeacherConfig, data_id: str | None) -> tuple[str, dict[str, Any]]:
    """Cache key (16 hex digits) and the description it hashes. Anything that changes the weights is in it."""
    weights = None
    if backbone.arch and backbone.pretrained:
        weights = str(Path(backbone.weights_path).expanduser().resolve()) if backbone.weights_path else "torchvision-default"
    description = {
        "format": CACHE_FORMAT,
        "patch_size": patch_size,
        "descriptor_dim": descriptor_dim,
        "width": width,
        "backbone": {"arch": backbone.arch, "pretrained": bool(backbone.pretrained), "weights": weights},
        "data": data_id,
        "training": {k: v for k, v in asdict(config).items() if k not in ("cache_dir", "log_every")},
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]
    return digest, description


def cache_file(cache_dir: str | Path, patch_size: int, key: str) -> Path:
    return Path(cache_dir).expanduser() / f"us_teacher_p{patch_size}_{key}.pt"


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


# --- distillation data -------------------------------------------------------------------------------
class PatchSource:
    """Random p×p patches (and perturbed / other-image copies for the triplet loss) from a set of images."""

    def __init__(self, images: Sequence[torch.Tensor], generator: torch.Generator) -> None:
        if not images:
            raise ConfigError("the teacher's distillation data holds no images")
        # stored as 8-bit (exact for images that came from 8-bit files): ImageNet-sized sets fit in memory
        self.images = [im if im.dtype == torch.uint8 else (im * 255).round().clamp(0, 255).to(torch.uint8)
                       for im in images]
        self.generator = generator

    def _randint(self, high: int, n: int) -> torch.Tensor:
        return torch.randint(0, max(1, high), (n,), generator=self.generator)

    def _crop(self, which: torch.Tensor, top: torch.Tensor, left: torch.Tensor, p: int) -> torch.Tensor:
        out = []
        for i, y, x in zip(which.tolist(), top.tolist(), left.tolist()):
            image = self.images[i]
            y = min(max(y, 0), image.shape[-2] - p)
            x = min(max(x, 0), image.shape[-1] - p)
            out.append(image[:, y:y + p, x:x + p])
        return torch.stack(out).float() / 255

    def sample(self, n: int, p: int, with_triplets: bool = False, shift: int = 2) -> dict[str, torch.Tensor]:
        small = [i for i, im in enumerate(self.images) if min(im.shape[-2:]) < p]
        if small:
            raise ConfigError(f"distillation image {small[0]} is smaller than the {p}×{p} patch")
        which = self._randint(len(self.images), n)
        sizes = torch.tensor([self.images[i].shape[-2:] for i in which.tolist()])
        top = (torch.rand(n, generator=self.generator) * (sizes[:, 0] - p + 1)).long()
        left = (torch.rand(n, generator=self.generator) * (sizes[:, 1] - p + 1)).long()
        out = {"anchor": self._crop(which, top, left, p)}
        if with_triplets:
            dy = torch.randint(-shift, shift + 1, (n,), generator=self.generator)
            dx = torch.randint(-shift, shift + 1, (n,), generator=self.generator)
            positive = self._crop(which, top + dy, left + dx, p)
            gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=self.generator) - 0.5)  # luminance change
            noise = 0.01 * torch.randn(positive.shape, generator=self.generator)
            out["positive"] = (positive * gain + noise).clamp(0, 1)
            other = (which + 1 + self._randint(len(self.images) - 1, n)) % len(self.images)  # another image
            if len(self.images) == 1:
                other = which
            sizes = torch.tensor([self.images[i].shape[-2:] for i in other.tolist()])
            top = (torch.rand(n, generator=self.generator) * (sizes[:, 0] - p + 1)).long()
            left = (torch.rand(n, generator=self.generator) * (sizes[:, 1] - p + 1)).long()
            out["negative"] = self._crop(other, top, left, p)
        return out


def load_image_folder(folder: str | Path, size: int, max_images: int | None = None, seed: int = 0) -> list[torch.Tensor]:
    """Images under `folder` (recursively, ImageFolder-style) as uint8 tensors, shorter side resized to
    `size`; a seeded subset of `max_images` files when there are more."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"method.module.teacher.image_folder={root}: no such folder (expected a folder of "
                          "natural images, e.g. ImageNet's train/ folder)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"method.module.teacher.image_folder={root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if max_images is not None and len(files) > max_images:
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:max_images]
        files = [files[i] for i in sorted(keep.tolist())]
    images = []
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / min(image.size)
            image = image.resize((max(size, round(image.size[0] * scale)), max(size, round(image.size[1] * scale))),
                                 Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()))
    return images


# --- losses ----------------------------------------------------------------------------------------------
def compactness_loss(descriptors: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal entries of the descriptor correlation matrix over the minibatch (N×d)."""
    centred = descriptors - descriptors.mean(dim=0, keepdim=True)
    normalised = centred / centred.pow(2).sum(dim=0, keepdim=True).sqrt().clamp_min(1e-8)
    corr = normalised.T @ normalised
    off_diagonal = corr - torch.diag(torch.diagonal(corr))
    return off_diagonal.pow(2).sum() / 2


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, δ + δ+ − δ−) with δ− the smaller of the anchor–negative and positive–negative distances."""
    d_pos = (anchor - positive).pow(2).sum(dim=1)
    d_neg = torch.minimum((anchor - negative).pow(2).sum(dim=1), (positive - negative).pow(2).sum(dim=1))
    return F.relu(margin + d_pos - d_neg).mean()


class DistillationTarget(nn.Module):
    """The pretrained backbone's pooled feature vector of a patch (ResNet-18: 512-d after global pooling)."""

    def __init__(self, backbone: nn.Module, input_size: int | None) -> None:
        super().__init__()
        if not hasattr(backbone, "fc"):
            raise ConfigError("the teacher distils torchvision ResNet-style backbones (a model with .fc)")
        backbone.fc = nn.Identity()
        self.backbone = backbone.eval().requires_grad_(False)
        self.input_size = input_size

    @torch.no_grad()
    def forward(self, normalised_patches: torch.Tensor) -> torch.Tensor:
        x = normalised_patches
        if self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone(x)


def distill_teacher(net: PatchNet, target: DistillationTarget, source: PatchSource, config: TeacherConfig,
                    device: torch.device) -> dict[str, float]:
    """Train `net` in place with λ_k·L_k + λ_c·L_c + λ_m·L_m; returns the last step's losses."""
    p = net.patch_size
    with torch.no_grad():
        probe = target(normalize_images(source.sample(2, p)["anchor"].to(device)))
    decoder = nn.Linear(net.descriptor_dim, probe.shape[1]).to(device)
    params = list(net.parameters()) + list(decoder.parameters())
    net.requires_grad_(True).train()
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    losses: dict[str, float] = {}
    for step in range(config.steps):
        batch = source.sample(config.batch_size, p, with_triplets=config.lambda_m > 0)
        anchor = normalize_images(batch["anchor"].to(device))
        descriptors = net(anchor)
        loss_k = (decoder(descriptors) - target(anchor)).pow(2).sum(dim=1).mean()
        loss_c = compactness_loss(descriptors)
        loss = config.lambda_k * loss_k + config.lambda_c * loss_c
        if config.lambda_m > 0:
            loss_m = triplet_loss(descriptors, net(normalize_images(batch["positive"].to(device))),
                                  net(normalize_images(batch["negative"].to(device))), config.triplet_margin)
            loss = loss + config.lambda_m * loss_m
            losses["loss_m"] = loss_m.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.update(loss=loss.item(), loss_k=loss_k.item(), loss_c=loss_c.item())
        if config.log_every and (step + 1) % config.log_every == 0:
            print(f"teacher p={p} step {step + 1}/{config.steps}: " +
                  ", ".join(f"{k} {v:.4g}" for k, v in sorted(losses.items())))
    net.requires_grad_(False)  # no dropout/normalisation layers: train/eval mode makes no difference
    return losses


def prepare_teachers(teachers: dict[int, PatchNet], descriptor_dim: int, width: float, backbone: BackboneSpec,
                     config: TeacherConfig, category_images: Callable[[], list[torch.Tensor]], data_id: str,
                     device: torch.device, build_backbone: Callable[..., nn.Module]) -> dict[int, dict[str, Any]]:
    """Load every teacher from the cache or distil it (then cache it). Returns what happened per scale.

    With no backbone (`backbone=none`) the teachers keep their seeded random initialisation: nothing
    is distilled or cached. Backbone weights are only resolved when a teacher must be trained, so a
    cached teacher also works offline without the ImageNet file.
    """
    if not backbone.arch:
        return {p: {"source": "random_init"} for p in teachers}
    # Distilling draws random numbers (backbone construction, patch sampling); loading from the cache
    # draws none. Forking the global RNG keeps the students' initialisation and everything after it
    # identical whether the teachers came from the cache or were distilled in this run.
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        return _load_or_distil(teachers, descriptor_dim, width, backbone, config, category_images, data_id,
                               device, build_backbone)


def _load_or_distil(teachers: dict[int, PatchNet], descriptor_dim: int, width: float, backbone: BackboneSpec,
                    config: TeacherConfig, category_images: Callable[[], list[torch.Tensor]], data_id: str,
                    device: torch.device, build_backbone: Callable[..., nn.Module]) -> dict[int, dict[str, Any]]:
    report: dict[int, dict[str, Any]] = {}
    source_id = data_id if config.distill_data == "category" else f"imagefolder:{Path(config.image_folder or '').expanduser().resolve()}"
    target: DistillationTarget | None = None
    source: PatchSource | None = None
    for p, net in teachers.items():
        key, description = teacher_key(p, descriptor_dim, width, backbone, config, source_id)
        path = cache_file(config.cache_dir, p, key) if config.cache_dir else None
        lock = folder_lock(path.parent, f".{path.name}.lock") if path else contextlib.nullcontext()
        with lock:
            if path is not None and path.is_file():
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state["state_dict"])
                report[p] = {"source": "cache", "path": str(path), "key": key}
                continue
            if target is None:
                weights = build_backbone(backbone.arch, pretrained=bool(backbone.pretrained),
                                         weights_path=backbone.weights_path)
                target = DistillationTarget(weights, config.target_input_size).to(device)
            if source is None:
                if config.distill_data == "imagefolder":
                    if not config.image_folder:
                        raise ConfigError("method.module.teacher.distill_data=imagefolder needs "
                                          "method.module.teacher.image_folder=/path/to/natural/images")
                    images = load_image_folder(config.image_folder, config.image_folder_size,
                                               config.image_folder_max_images, config.seed)
                else:
                    images = category_images()
                source = PatchSource(images, torch.Generator().manual_seed(config.seed))
            source.generator.manual_seed(config.seed * 1000 + p)  # each scale's draws independent of order
            net.to(device)
            losses = distill_teacher(net, target, source, config, device)
            report[p] = {"source": "distilled", "key": key, "final_losses": losses}
            if path is not None:
                state = {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                         "description": description}
                _atomic_torch_save(state, path)
                report[p]["path"] = str(path)
    return report
