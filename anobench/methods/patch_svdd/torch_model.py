"""Patch SVDD networks (Yi & Yoon, ACCV 2020) as plain torch modules — no Lightning here.

Layer for layer as the official code (`nuclearboy95/Anomaly-Detection-PatchSVDD-PyTorch`,
codes/networks.py): `EncoderSmall` is the official `EncoderDeep`, `EncoderHier` contains it as
``.enc`` (the K = 32 encoder *is* the small encoder inside the hierarchical one, trained through
both losses), and `PositionClassifier` keeps the official weight-normalised last layer.

`PatchSVDDModel` is what the evaluator runs: it holds the hierarchical encoder, the per-pixel mean
training image used for normalisation and the training-patch embedding banks, and in eval mode maps
B×3×S×S images in [0, 1] to an `AnomalyOutput` (B×S×S map, B scores).

Dense inference. `EncoderSmall` has no padding and strides only in its first conv, so run fully
convolutionally on a whole image its output at grid position (i, j) is exactly the embedding of the
32×32 window whose top-left corner is (2i, 2j) (receptive field 31 px: the window's last row/column
is never read, neither by the per-patch encoder). Every K = 32 window at stride 2 therefore costs one
convolution pass; stride 4 is every second position. For K = 64 the hierarchical head (Conv 2×2 →
LReLU → Conv 1×1 → tanh) sees the four sub-patch embeddings at offsets 0 and 32 px, i.e. 16 positions
apart on the stride-2 map, so it runs as a dilated convolution on that map (dilation 16, or 2 on the
map already subsampled to stride 16). `tests/methods/test_patch_svdd.py` checks both against the
patch-by-patch computation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anobench.methods.base import AnomalyOutput
from anobench.methods.patch_svdd.nearest import NearestNeighbourIndex, NearestNeighbourSettings, subsample_bank
from anobench.precision import strict_float32

SMALL_K = 32  # patch size of EncoderSmall
BIG_K = 64  # patch size of EncoderHier
_SMALL_STRIDE = 2  # spacing, in pixels, of EncoderSmall's dense output grid
_NEG_SLOPE = 0.1


def _float32(method):
    """Run an inference method in full float32: autocast off and TF32 off. Under trainer.precision=bf16-mixed
    (training only) the embeddings would keep ~3 significant digits, and TF32 convolutions / matmuls (cuDNN's
    default on Ampere+, or set_float32_matmul_precision('high')) ~4, too few for nearest-neighbour distances of
    ~1e-3 of their norm; banks and test patches are always embedded and searched in float32."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        with torch.autocast(device_type=self.mean_image.device.type, enabled=False), strict_float32():
            return method(self, *args, **kwargs)

    return wrapped


class EncoderSmall(nn.Module):
    """K = 32 encoder (official `EncoderDeep`): 8 unpadded 3×3 convs, stride 2 on the first only.

    Channels 3→32→64→128→128→64→32→32→D, LeakyReLU(0.1) between, tanh at the end. A 32×32 patch
    gives a D×1×1 embedding; a larger input gives the dense stride-2 grid of window embeddings.
    """

    channels = (32, 64, 128, 128, 64, 32, 32)

    def __init__(self, embedding_dim: int = 64, bias: bool = True, cpu_chunk: int | None = None) -> None:
        super().__init__()
        self.D = embedding_dim
        # On CPU, a batch is run in parts of about `cpu_chunk` 32×32 patches' worth of pixels so that each
        # call's activations stay in cache (same values; docs/performance.md#patch-svdd-encoder). GPUs get
        # the whole batch.
        if cpu_chunk is not None and cpu_chunk < 1:
            raise ValueError(f"encoder_cpu_chunk must be >= 1 or null, got {cpu_chunk}")
        self.cpu_chunk = cpu_chunk
        widths = (3, *self.channels, embedding_dim)
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1, padding=0, bias=bias)
            for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:]))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_chunk is not None and not x.is_cuda:
            rows = max(1, self.cpu_chunk * SMALL_K * SMALL_K // (x.shape[-2] * x.shape[-1]))
            if x.shape[0] > rows:
                return torch.cat([self._forward(part) for part in x.split(rows)])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            h = conv(h)
            h = torch.tanh(h) if i == last else F.leaky_relu(h, _NEG_SLOPE)
        return h


class EncoderHier(nn.Module):
    """K = 64 hierarchical encoder (official `EncoderHier(64, D)`).

    The 64×64 patch is cut into 2×2 sub-patches of 32×32, each encoded by the shared `EncoderSmall`
    (``self.enc``), tiled back into a D×2×2 map, then Conv 2×2 (D→128) + LeakyReLU(0.1) + Conv 1×1
    (128→D) + tanh.
    """

    def __init__(self, embedding_dim: int = 64, bias: bool = True, cpu_chunk: int | None = None) -> None:
        super().__init__()
        self.D = embedding_dim
        self.enc = EncoderSmall(embedding_dim, bias=bias, cpu_chunk=cpu_chunk)
        self.conv1 = nn.Conv2d(embedding_dim, 128, 2, stride=1, padding=0, bias=bias)
        self.conv2 = nn.Conv2d(128, embedding_dim, 1, stride=1, padding=0, bias=bias)

    def head(self, h: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        """Hierarchical head on a map of sub-patch embeddings whose 2×2 neighbours are `dilation` apart."""
        h = F.conv2d(h, self.conv1.weight, self.conv1.bias, dilation=dilation)
        h = F.leaky_relu(h, _NEG_SLOPE)
        h = self.conv2(h)
        return torch.tanh(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_small(x, x[:0, :, : x.shape[-2] // 2, : x.shape[-1] // 2])[0]

    def forward_with_small(self, x: torch.Tensor, small: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of K = 64 patches `x` and of K = 32 patches `small` (by the inner encoder) with one
        pass of the shared small encoder over the 4 sub-patches of every big patch and the small ones."""
        n, k = x.shape[0], x.shape[-1] // 2
        quads = torch.cat(
            [x[..., :k, :k], x[..., :k, k:], x[..., k:, :k], x[..., k:, k:], small], dim=0
        )  # 4n sub-patches, same order as the official forward_hier, then the K = 32 patches
        h1, h2, h3, h4, h_small = self.enc(quads).split([n, n, n, n, small.shape[0]], dim=0)
        tiled = torch.cat([torch.cat([h1, h2], dim=3), torch.cat([h3, h4], dim=3)], dim=2)
        return self.head(tiled), h_small


class NormalizedLinear(nn.Module):
    """The official weight-normalised linear layer, kept with its exact semantics.

    The official forward divides the weight by its norm over dim 0 (each input column normalised
    across the outputs) *inside* ``torch.no_grad()``, so the weight never receives a gradient: it
    stays a fixed, column-normalised random projection and only the bias trains. We reproduce that
    (the weight is a parameter with ``requires_grad=False``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight / self.weight.norm(dim=0, keepdim=True)).detach()
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PositionClassifier(nn.Module):
    """8-way relative-position classifier on h1 − h2: Linear D→128, LReLU, Linear 128→128, LReLU, WN-Linear 128→8."""

    def __init__(self, embedding_dim: int = 64, num_classes: int = 8) -> None:
        super().__init__()
        self.D = embedding_dim
        self.fc1 = nn.Linear(embedding_dim, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = NormalizedLinear(128, num_classes)

    def forward(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        h = h1.reshape(-1, self.D) - h2.reshape(-1, self.D)
        h = F.leaky_relu(self.fc1(h), _NEG_SLOPE)
        h = F.leaky_relu(self.fc2(h), _NEG_SLOPE)
        return self.fc3(h)


def distribute_scores(scores: torch.Tensor, image_size: tuple[int, int], patch: int, stride: int) -> torch.Tensor:
    """Spread each patch score uniformly over its K×K pixels and average overlapping patches.

    `scores` is B×n_h×n_w for patches at (i·stride, j·stride). Pixels no patch covers (only when
    (S − K) is not a multiple of the stride) get 0, as in the official `distribute_score`.
    """
    height, width = image_size
    n_h, n_w = scores.shape[-2:]
    pad = (height - ((n_h - 1) * stride + patch), width - ((n_w - 1) * stride + patch))
    kernel = scores.new_ones(1, 1, patch, patch)
    summed = F.conv_transpose2d(scores[:, None], kernel, stride=stride, output_padding=pad)
    count = F.conv_transpose2d(torch.ones_like(scores[:1, None]), kernel, stride=stride, output_padding=pad)
    return (summed / count.clamp_min(1.0))[:, 0]


def _grid_size(length: int, patch: int, stride: int) -> int:
    return (length - patch) // stride + 1


class PatchSVDDModel(nn.Module):
    """Hierarchical encoder + normalisation mean + embedding banks; eval-mode forward = anomaly map.

    Normalisation follows the official ``get_x_standardized``: (x₂₅₅ − mean₂₅₅) / 255 with mean the
    per-pixel (H×W×3) mean of the category's training images. Our images arrive in [0, 1], where
    that is exactly x − mean with the mean taken over the same [0, 1] images (no /std). The mean is a
    persistent buffer (saved in checkpoints); the banks are non-persistent buffers — they are rebuilt
    from the training images by `fit_bank` at every test start (the base class calls
    ``prepare_inference``) and would make checkpoints ~200 MB per category.
    """

    def __init__(
        self,
        embedding_dim: int = 64,
        stride_64: int = 16,
        stride_32: int = 4,
        nearest: NearestNeighbourSettings | None = None,
        encoder_cpu_chunk: int | None = 128,
    ) -> None:
        super().__init__()
        for name, stride in (("stride_64", stride_64), ("stride_32", stride_32)):
            if stride < _SMALL_STRIDE or stride % _SMALL_STRIDE:
                raise ValueError(f"{name} must be a positive multiple of {_SMALL_STRIDE} px, got {stride}")
        self.D = embedding_dim
        self.stride_64 = stride_64
        self.stride_32 = stride_32
        self.nearest = nearest or NearestNeighbourSettings()  # how patch_scores searches the banks
        self._indexes: dict[str, NearestNeighbourIndex] = {}  # built lazily per bank, reset by fit_bank
        self.encoder = EncoderHier(embedding_dim, cpu_chunk=encoder_cpu_chunk)
        # 3×H×W, set by fit_mean; shape follows the training images (resized on checkpoint load).
        self.register_buffer("mean_image", torch.zeros(3, 0, 0))
        self.register_buffer("bank_64", torch.zeros(0, embedding_dim), persistent=False)
        self.register_buffer("bank_32", torch.zeros(0, embedding_dim), persistent=False)

    # --- encoders ---------------------------------------------------------------------------
    @property
    def encoder_small(self) -> EncoderSmall:
        """The K = 32 encoder — the one inside the hierarchical encoder (official ``enc.enc``)."""
        return self.encoder.enc

    @property
    def has_mean(self) -> bool:
        return self.mean_image.numel() > 0

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images → official standardisation x − mean_train_image (see class docstring)."""
        if not self.has_mean:
            raise RuntimeError("PatchSVDDModel has no mean image yet: call fit_mean() on the training images")
        if images.shape[-3:] != self.mean_image.shape:
            raise ValueError(
                f"images are {tuple(images.shape[-3:])} but the mean training image is "
                f"{tuple(self.mean_image.shape)}; Patch SVDD needs train and test at the same image size"
            )
        return images - self.mean_image

    def dense_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of every K = 64 patch at stride_64 and every K = 32 patch at stride_32.

        `x` is already normalised, B×3×H×W. Returns (B×D×n64_h×n64_w, B×D×n32_h×n32_w) with
        n = (size − K) // stride + 1, patch (i, j) starting at pixel (i·stride, j·stride).
        """
        height, width = x.shape[-2:]
        if min(height, width) < BIG_K:
            raise ValueError(f"Patch SVDD needs images of at least {BIG_K}×{BIG_K} px, got {height}×{width}")
        small = self.encoder_small(x)  # stride-2 grid of 32×32 windows
        step32 = self.stride_32 // _SMALL_STRIDE
        emb32 = small[..., ::step32, ::step32]

        offset = (BIG_K // 2) // _SMALL_STRIDE  # sub-patches 32 px = 16 grid steps apart
        step64 = self.stride_64 // _SMALL_STRIDE
        if offset % step64 == 0:  # subsample first, then a (cheaper) less dilated head
            emb64 = self.encoder.head(small[..., ::step64, ::step64], dilation=offset // step64)
        else:
            emb64 = self.encoder.head(small, dilation=offset)[..., ::step64, ::step64]
        n64 = (_grid_size(height, BIG_K, self.stride_64), _grid_size(width, BIG_K, self.stride_64))
        n32 = (_grid_size(height, SMALL_K, self.stride_32), _grid_size(width, SMALL_K, self.stride_32))
        return emb64[..., : n64[0], : n64[1]], emb32[..., : n32[0], : n32[1]]

    # --- fitting (no gradients) -------------------------------------------------------------
    @torch.no_grad()
    def fit_mean(self, batches: Iterable[torch.Tensor]) -> None:
        """Per-pixel mean of the training images (B×3×H×W in [0, 1]), accumulated in float64."""
        total: torch.Tensor | None = None
        count = 0
        for images in batches:
            images = images.to(self.mean_image.device, torch.float64)
            batch_sum = images.sum(dim=0)
            total = batch_sum if total is None else total + batch_sum
            count += images.shape[0]
        if total is None:
            raise ValueError("fit_mean got no training images")
        self.mean_image = (total / count).to(self.mean_image.dtype)

    @torch.no_grad()
    @_float32
    def fit_bank(
        self, batches: Iterable[torch.Tensor], subsample: float | int | None = None, seed: int = 0
    ) -> None:
        """Embed every dense training patch (both K) into the banks; optional random bank subset."""
        was_training = self.training
        self.eval()
        banks64, banks32 = [], []
        for images in batches:
            x = self.normalize(images.to(self.mean_image.device, self.mean_image.dtype))
            emb64, emb32 = self.dense_embeddings(x)
            banks64.append(emb64.permute(0, 2, 3, 1).reshape(-1, self.D))
            banks32.append(emb32.permute(0, 2, 3, 1).reshape(-1, self.D))
        self.train(was_training)
        if not banks32:
            raise ValueError("fit_bank got no training images")
        self.bank_64 = subsample_bank(torch.cat(banks64), subsample, seed=seed)
        self.bank_32 = subsample_bank(torch.cat(banks32), subsample, seed=seed + 1)
        self._indexes = {}

    def nn_index(self, name: str) -> NearestNeighbourIndex:
        """The search index over bank `name` ('bank_64' / 'bank_32'), built on first use after fit_bank."""
        bank = getattr(self, name)
        index = self._indexes.get(name)
        if index is None or index.bank is not bank or index.settings is not self.nearest:
            index = NearestNeighbourIndex(bank, self.nearest)
            self._indexes[name] = index
        return index

    def nn_indexes(self) -> dict[str, NearestNeighbourIndex]:
        """The search indexes built so far, by bank name."""
        return dict(self._indexes)

    # --- inference ---------------------------------------------------------------------------
    @_float32
    def patch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2 distance of each dense test patch to its nearest training patch: (B×n64×n64, B×n32×n32)."""
        if self.bank_64.shape[0] == 0 or self.bank_32.shape[0] == 0:
            raise RuntimeError("PatchSVDDModel has empty embedding banks: call fit_bank() on the training images")
        emb64, emb32 = self.dense_embeddings(self.normalize(images))
        out = []
        for emb, name in ((emb64, "bank_64"), (emb32, "bank_32")):
            b, d, n_h, n_w = emb.shape
            queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
            out.append(self.nn_index(name).query(queries).reshape(b, n_h, n_w))
        return out[0], out[1]

    @_float32
    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        """B×3×S×S images in [0, 1] → map B×S×S (M64 ⊙ M32) and score B (max of the map)."""
        with torch.no_grad():
            scores64, scores32 = self.patch_scores(images)
            size = tuple(images.shape[-2:])
            map64 = distribute_scores(scores64, size, BIG_K, self.stride_64)
            map32 = distribute_scores(scores32, size, SMALL_K, self.stride_32)
            anomaly_map = map64 * map32
            return AnomalyOutput(anomaly_map=anomaly_map, pred_score=anomaly_map.flatten(1).amax(dim=1))

    # --- checkpoints: the mean image's shape is only known after fit_mean ----------------------
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "mean_image"
        if key in state_dict and state_dict[key].shape != self.mean_image.shape:
            self.mean_image = torch.zeros_like(state_dict[key], device=self.mean_image.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
