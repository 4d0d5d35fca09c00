"""Uninformed Students: patch descriptor networks, dense extraction, student ensemble scoring.

A patch network maps a p×p patch (p ∈ {17, 33, 65}) to a d-dimensional descriptor. Anomaly maps need
one descriptor per pixel, i.e. the network applied to the patch centred on every pixel. Running it
patch by patch costs H·W forward passes; `PatchNet.dense` gets the identical numbers from one pass
over the image with the fast dense feature extraction of Bailer et al. (the "multi-pool" trick the
paper relies on): every stride-2 max-pool is replaced by a stride-1 pool whose output is split into
its 2×2 phase sub-grids, which are stacked into the batch; later layers run as ordinary convolutions
on every phase, and the phases are interleaved back at the end (`_unwarp`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anobench.methods.base import AnomalyOutput
from anobench.metrics.pooling import MAP_POOLING, pool_maps

PATCH_SIZES = (17, 33, 65)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LEAKY_SLOPE = 5e-3

# Layer specs per receptive field (LuyaooChen/uninformed-students-pytorch models.py, which follows the
# paper's supplementary tables): ("conv", out_channels, kernel) | ("pool",). Hidden widths are scaled
# by `width`; the last conv outputs the descriptor (d channels) with no activation.
_ARCHITECTURES: dict[int, list[tuple]] = {
    17: [("conv", 128, 6), ("conv", 256, 5), ("conv", 256, 5), ("conv", None, 4)],
    33: [("conv", 128, 3), ("pool",), ("conv", 256, 5), ("pool",), ("conv", 256, 2), ("conv", None, 4)],
    65: [("conv", 128, 5), ("pool",), ("conv", 128, 5), ("pool",), ("conv", 128, 5), ("pool",),
         ("conv", 256, 4), ("conv", None, 1)],
}


class PatchNet(nn.Module):
    """Patch CNN with receptive field `patch_size` → `descriptor_dim` channels (teacher or student)."""

    def __init__(self, patch_size: int, descriptor_dim: int = 128, width: float = 1.0) -> None:
        super().__init__()
        if patch_size not in _ARCHITECTURES:
            raise ValueError(f"patch_size={patch_size}: expected one of {sorted(_ARCHITECTURES)}")
        self.patch_size = patch_size
        self.descriptor_dim = descriptor_dim
        layers: list[nn.Module] = []
        spec = _ARCHITECTURES[patch_size]
        channels = 3
        for i, item in enumerate(spec):
            if item[0] == "pool":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out = descriptor_dim if item[1] is None else max(1, round(item[1] * width))
            layers.append(nn.Conv2d(channels, out, item[2]))
            if i < len(spec) - 1:
                layers.append(nn.LeakyReLU(LEAKY_SLOPE))
            channels = out
        self.layers = nn.Sequential(*layers)
        self.n_pools = sum(1 for item in spec if item[0] == "pool")

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Descriptors of p×p patches: N×3×p×p → N×d (the network as trained on single patches)."""
        if patches.shape[-2:] != (self.patch_size, self.patch_size):
            raise ValueError(f"PatchNet({self.patch_size}) needs {self.patch_size}×{self.patch_size} patches, "
                             f"got {tuple(patches.shape[-2:])}")
        return self.layers(patches).flatten(1)

    def dense(self, images: torch.Tensor, padding: bool = True) -> torch.Tensor:
        """One descriptor per pixel: B×3×H×W → B×d×H×W, the value at (i, j) being `forward` of the p×p
        patch centred on (i, j) of the image reflect-padded by (p − 1)/2 (`pad_images`; as the reference
        implementation — zero padding made the border band score high on normal images).

        padding=False: only patches that lie inside `images`, B×d×(H−p+1)×(W−p+1), the value at (i, j)
        being `forward` of the patch whose top-left corner is (i, j) (training on crops with context)."""
        return _dense(list(self.layers), self.n_pools, self.patch_size, images, padding)


def ensemble_dense(students: Sequence[PatchNet], images: torch.Tensor, padding: bool = True) -> torch.Tensor:
    """`PatchNet.dense` of every student in one pass: M×B×d×H×W (same values as stacking M calls).

    The students share an architecture, so their convolutions fuse into one: the first layer's M weight
    tensors concatenate along the output channels (every student reads the same 3 input channels), every
    later layer becomes a grouped convolution with M groups (student m's channels only see student m's).
    Gradients flow back to each student's own parameters, so training uses it too; the state dict keeps
    one PatchNet per student (checkpoints and the teacher cache are unchanged). Compared with
    torch.func.stack_module_state + vmap this needs no second copy of the parameters for the optimiser.
    """
    students = list(students)
    first = students[0]
    if len(students) == 1:
        return first.dense(images, padding)[None]
    layers: list[Callable[[torch.Tensor], torch.Tensor]] = []
    n_convs = 0
    for i, layer in enumerate(first.layers):
        if isinstance(layer, nn.Conv2d):
            weight = torch.cat([s.layers[i].weight for s in students])
            bias = torch.cat([s.layers[i].bias for s in students])
            groups = 1 if n_convs == 0 else len(students)
            layers.append(functools.partial(F.conv2d, weight=weight, bias=bias, groups=groups))
            n_convs += 1
        else:
            layers.append(layer)
    out = _dense(layers, first.n_pools, first.patch_size, images, padding)  # B×(M·d)×H×W
    return out.unflatten(1, (len(students), first.descriptor_dim)).transpose(0, 1)


def _dense(layers: Sequence[Callable[[torch.Tensor], torch.Tensor]], n_pools: int, patch_size: int,
           images: torch.Tensor, padding: bool) -> torch.Tensor:
    """Fast dense extraction (see the module docstring) through `layers`; nn.MaxPool2d marks a pool."""
    b, _, height, width = images.shape
    half = (patch_size - 1) // 2 if padding else 0
    out_h, out_w = (height, width) if padding else (height - patch_size + 1, width - patch_size + 1)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"PatchNet({patch_size}).dense(padding=False) needs at least "
                         f"{patch_size}×{patch_size} pixels, got {height}×{width}")
    stride = 2 ** n_pools
    # extra bottom/right margin: phase splits trim at most a few trailing rows, all beyond the output
    x = F.pad(pad_images(images, half), (0, 2 * stride, 0, 2 * stride))
    phases = 1  # x: (phases·phases·B)×C×h×w, sub-grid (a, b) of the dense map at [a, b, batch]
    for layer in layers:
        if isinstance(layer, nn.MaxPool2d):
            # dense stride-1 pool, then split each sub-grid by row/column parity (r, c): the new
            # sub-grid index is a + phases·r (resp. b + phases·c), i.e. r outermost when flattened
            x = F.max_pool2d(x, 2, stride=1).unflatten(0, (phases, phases, b))
            rows, cols = x.shape[-2] // 2, x.shape[-1] // 2
            split = torch.stack([torch.stack([x[..., r::2, c::2][..., :rows, :cols] for c in (0, 1)])
                                 for r in (0, 1)])  # r, c, a, b, B, C, h, w
            x = split.permute(0, 2, 1, 3, 4, 5, 6, 7).flatten(0, 1).flatten(1, 2).flatten(0, 2)
            phases *= 2
        else:
            x = layer(x)
    return _unwarp(x, phases, b)[..., :out_h, :out_w]


def pad_images(images: torch.Tensor, half: int) -> torch.Tensor:
    """Reflect-pad by `half` pixels on every side (the reference implementation's padding); images no
    larger than `half` (reflection impossible) are padded by replication."""
    if half == 0:
        return images
    mode = "reflect" if half < min(images.shape[-2:]) else "replicate"
    return F.pad(images, (half, half, half, half), mode=mode)


def _unwarp(x: torch.Tensor, phases: int, batch: int) -> torch.Tensor:
    """(phases·phases·B)×C×h×w sub-grid stack → B×C×(h·phases)×(w·phases): out[.., i·s+a, j·s+b] = grid (a, b)."""
    _, channels, h, w = x.shape
    x = x.reshape(phases, phases, batch, channels, h, w)
    return x.permute(2, 3, 4, 0, 5, 1).reshape(batch, channels, h * phases, w * phases)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB → ImageNet-normalised (the teacher's pretrained backbone expects it)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def regression_error(student_outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖mean of the students − normalised teacher‖² per pixel: M×B×d×H×W, B×d×H×W → B×H×W."""
    return (student_outputs.mean(dim=0) - target).pow(2).sum(dim=1)


def predictive_variance(student_outputs: torch.Tensor) -> torch.Tensor:
    """Ensemble variance per pixel, mean_i ‖μ_i‖² − ‖mean μ‖² written as mean_i ‖μ_i − μ̄‖² (never < 0)."""
    mean = student_outputs.mean(dim=0, keepdim=True)
    return (student_outputs - mean).pow(2).sum(dim=2).mean(dim=0)


class StudentTeacherModel(nn.Module):
    """One frozen teacher and `n_students` students per receptive field, plus the statistics that
    normalise the teacher's descriptors and standardise error and variance (all buffers)."""

    def __init__(self, patch_sizes: Iterable[int] = PATCH_SIZES, n_students: int = 3, descriptor_dim: int = 128,
                 width: float = 1.0) -> None:
        super().__init__()
        self.patch_sizes = tuple(int(p) for p in patch_sizes)
        if not self.patch_sizes or len(set(self.patch_sizes)) != len(self.patch_sizes):
            raise ValueError(f"patch_sizes={list(self.patch_sizes)}: expected distinct values from {PATCH_SIZES}")
        if n_students < 1:
            raise ValueError(f"n_students={n_students}: expected >= 1")
        self.n_students = n_students
        self.descriptor_dim = descriptor_dim
        self.teachers = nn.ModuleDict({str(p): PatchNet(p, descriptor_dim, width) for p in self.patch_sizes})
        self.students = nn.ModuleDict({
            str(p): nn.ModuleList(PatchNet(p, descriptor_dim, width) for _ in range(n_students))
            for p in self.patch_sizes})
        self.teachers.requires_grad_(False)
        n = len(self.patch_sizes)
        self.register_buffer("teacher_mean", torch.zeros(n, descriptor_dim))
        self.register_buffer("teacher_std", torch.ones(n, descriptor_dim))
        self.register_buffer("error_stats", torch.tensor([[0.0, 1.0]] * n))  # (mean, std) per scale
        self.register_buffer("variance_stats", torch.tensor([[0.0, 1.0]] * n))
        self.register_buffer("fitted", torch.zeros(1, dtype=torch.bool))  # teacher statistics measured

    # --- descriptors --------------------------------------------------------------------------------
    def teacher_targets(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """Normalised teacher descriptors (x already ImageNet-normalised): B×d×H×W."""
        k = self.patch_sizes.index(scale)
        out = self.teachers[str(scale)].dense(x)
        return (out - self.teacher_mean[k].view(1, -1, 1, 1)) / self.teacher_std[k].view(1, -1, 1, 1)

    def student_outputs(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """All students' dense predictions: M×B×d×H×W (one fused pass, `ensemble_dense`)."""
        return ensemble_dense(self.students[str(scale)], x)

    def error_and_variance(self, images: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Raw (unstandardised) regression error and predictive variance per scale, each B×H×W."""
        x = normalize_images(images)
        out = {}
        for p in self.patch_sizes:
            students = self.student_outputs(x, p)
            out[p] = (regression_error(students, self.teacher_targets(x, p)), predictive_variance(students))
        return out

    def standardize(self, scale: int, error: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """(e − μ_e)/σ_e + (v − μ_v)/σ_v with the statistics of normal validation images."""
        k = self.patch_sizes.index(scale)
        e_mean, e_std = self.error_stats[k]
        v_mean, v_std = self.variance_stats[k]
        return (error - e_mean) / e_std.clamp_min(1e-12) + (variance - v_mean) / v_std.clamp_min(1e-12)

    def score_maps(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Standardised single-scale anomaly maps, one B×H×W map per receptive field."""
        return {p: self.standardize(p, e, v) for p, (e, v) in self.error_and_variance(images).items()}

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        maps = self.score_maps(images)
        anomaly_map = torch.stack([maps[p] for p in self.patch_sizes]).mean(dim=0)  # multi-scale: the mean
        return AnomalyOutput(anomaly_map=anomaly_map, pred_score=pool_maps(anomaly_map, MAP_POOLING))
