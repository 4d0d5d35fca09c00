"""SynthCP (Xia et al., ECCV 2020) adapted to MVTec AD, as plain torch modules — no Lightning here.

Pipeline (paper: segment → synthesise from the layout → compare):

1. **Layout** (plays the segmentation role; MVTec AD has no semantic labels). A frozen torchvision
   ResNet (``layout_layer``, stride 8 for ``layer2``) embeds the image; each feature vector is
   L2-normalised and assigned to the nearest of K centroids fitted by seeded k-means on the
   *training* images only (`fit_layout`). The one-hot K×h×w assignment is the layout — a hard
   label map, like the argmax of a segmentation network.
2. **Synthesis**. `LayoutGenerator`, a SPADE-style generator conditioned on the layout alone (no
   noise, no style code: SynthCP's label-to-image setting), upsamples from the layout resolution to
   the image through residual blocks whose normalisation is modulated by γ, β predicted from the
   layout (SPADE). It learns what a normal image with that layout looks like.
3. **Comparison** (paper: cosine similarity of the segmentation network's features of input and
   synthesis). The same frozen ResNet embeds input and synthesis at ``compare_layers``; the map is
   the per-pixel cosine distance 1 − cos, each layer bilinearly upsampled to the image size and the
   layers averaged; the image score is the max of the map.

Everything inference needs — backbone weights, centroids, generator — is in the state_dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anobench.methods.base import AnomalyOutput
from anobench.metrics.pooling import MAP_POOLING, pool_maps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class FrozenResNetFeatures(nn.Module):
    """A torchvision ResNet truncated after the deepest stage needed; eval mode, no gradients to its weights.

    Gradients still flow *through* it to its input (the generator's perceptual loss needs that).
    """

    def __init__(self, resnet: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        unknown = sorted(set(layers) - set(_STAGES))
        if unknown:
            raise ValueError(f"unknown ResNet stage(s) {unknown}; expected some of {list(_STAGES)}")
        self.layers = tuple(layers)
        depth = max(_STAGES.index(name) for name in layers) + 1
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleDict({name: getattr(resnet, name) for name in _STAGES[:depth]})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenResNetFeatures":
        return super().train(False)  # frozen: BN statistics never move

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """[0, 1] images → {stage name: feature map} for the stages in ``self.layers``."""
        h = self.stem((images - self.mean) / self.std)
        out = {}
        for name, stage in self.stages.items():
            h = stage(h)
            if name in self.layers:
                out[name] = h
        return out

    def channels(self, name: str) -> int:
        stage = self.stages[name]
        last_block = stage[-1]
        if not hasattr(last_block, "conv2"):  # EfficientNet-Lite0 (anobench.backbones): MBConv blocks
            return last_block._project_conv.out_channels
        conv = getattr(last_block, "conv3", None) or last_block.conv2
        return conv.out_channels


# --------------------------------------------------------------------------------------------
# layout: seeded k-means on training-image features
# --------------------------------------------------------------------------------------------
def _squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.T + centroids.pow(2).sum(1)[None]).clamp_min(0)


def kmeans(x: torch.Tensor, k: int, iterations: int = 30, seed: int = 0) -> torch.Tensor:
    """Centroids (k×D) of `x` (N×D): k-means++ initialisation and Lloyd iterations, seeded (own generator)."""
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} vectors, got {x.shape[0]}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = x.float()
    first = int(torch.randint(x.shape[0], (1,), generator=gen))
    centroids = x[first : first + 1]
    closest = _squared_distances(x, centroids)[:, 0]
    for _ in range(1, k):
        probs = closest / closest.sum() if closest.sum() > 0 else torch.full_like(closest, 1.0 / len(closest))
        pick = int(torch.multinomial(probs.cpu(), 1, generator=gen))
        centroids = torch.cat([centroids, x[pick : pick + 1]])
        closest = torch.minimum(closest, _squared_distances(x, centroids[-1:])[:, 0])
    for _ in range(iterations):
        assign = _squared_distances(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        updated = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if torch.allclose(updated, centroids):
            break
        centroids = updated
    return centroids


# --------------------------------------------------------------------------------------------
# SPADE-style generator
# --------------------------------------------------------------------------------------------
class SPADE(nn.Module):
    """Parameter-free BN, then γ(layout)·x̂ + β(layout) + x̂ (SPADE's (1 + γ) form).

    γ and β are predicted by a small conv net on the layout at its own (coarse) resolution and
    bilinearly resized to x: the layout is piecewise constant at that scale, so this is SPADE's
    conv on the nearest-upsampled map up to smoothing, at a fraction of the cost.
    """

    def __init__(self, channels: int, layout_channels: int, hidden: int = 32) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(layout_channels, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        h = self.shared(layout)
        gamma, beta = self.gamma(h), self.beta(h)
        if gamma.shape[-2:] != x.shape[-2:]:
            gamma = F.interpolate(gamma, size=x.shape[-2:], mode="bilinear", align_corners=False)
            beta = F.interpolate(beta, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.norm(x) * (1 + gamma) + beta


class SPADEResBlock(nn.Module):
    """SPADE residual block: [SPADE → LReLU → conv3×3] × 2, with a learned SPADE shortcut when widths differ."""

    def __init__(self, cin: int, cout: int, layout_channels: int, hidden: int = 32) -> None:
        super().__init__()
        middle = min(cin, cout)
        self.norm_0 = SPADE(cin, layout_channels, hidden)
        self.conv_0 = nn.Conv2d(cin, middle, 3, padding=1)
        self.norm_1 = SPADE(middle, layout_channels, hidden)
        self.conv_1 = nn.Conv2d(middle, cout, 3, padding=1)
        self.shortcut = None
        if cin != cout:
            self.norm_s = SPADE(cin, layout_channels, hidden)
            self.shortcut = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(self.norm_s(x, layout))
        h = self.conv_0(F.leaky_relu(self.norm_0(x, layout), 0.2))
        h = self.conv_1(F.leaky_relu(self.norm_1(h, layout), 0.2))
        return skip + h


class LayoutGenerator(nn.Module):
    """Layout (K×h×w one-hot) → image (3×(h·2^U)×(w·2^U), tanh in [−1, 1]) through U+1 SPADE blocks."""

    def __init__(self, layout_channels: int, channels: Sequence[int] = (128, 64, 32, 16), hidden: int = 32) -> None:
        super().__init__()
        channels = tuple(channels)
        self.upsampling = 2 ** (len(channels) - 1)
        self.head = nn.Conv2d(layout_channels, channels[0], 3, padding=1)
        widths = (channels[0], *channels)
        self.blocks = nn.ModuleList(SPADEResBlock(cin, cout, layout_channels, hidden)
                                    for cin, cout in zip(widths[:-1], widths[1:]))
        self.to_image = nn.Conv2d(channels[-1], 3, 3, padding=1)

    def forward(self, layout: torch.Tensor) -> torch.Tensor:
        h = self.head(layout)
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(h, layout)
        return torch.tanh(self.to_image(F.leaky_relu(h, 0.2)))


# --------------------------------------------------------------------------------------------
# the whole model
# --------------------------------------------------------------------------------------------
def cosine_distance_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel 1 − cos between feature maps B×C×h×w → B×h×w (0 = same direction)."""
    return 1.0 - F.cosine_similarity(a, b, dim=1, eps=1e-6)


class SynthCPModel(nn.Module):
    """Frozen feature network + k-means layout + layout-conditioned generator; eval forward = anomaly map."""

    def __init__(
        self,
        backbone: nn.Module,
        num_clusters: int = 8,
        layout_layer: str = "layer2",
        compare_layers: Sequence[str] = ("layer1",),
        generator_channels: Sequence[int] = (128, 64, 32, 16),
        spade_hidden: int = 32,
    ) -> None:
        super().__init__()
        self.layout_layer = layout_layer
        self.compare_layers = tuple(compare_layers)
        self.num_clusters = num_clusters
        self.features = FrozenResNetFeatures(backbone, (layout_layer, *self.compare_layers))
        self.layout_stride = 4 * 2 ** _STAGES.index(layout_layer)  # stem /4, then /2 per later stage
        self.generator = LayoutGenerator(num_clusters, generator_channels, spade_hidden)
        if self.generator.upsampling != self.layout_stride:
            raise ValueError(f"generator upsamples ×{self.generator.upsampling} but the {layout_layer} layout is "
                             f"1/{self.layout_stride} of the image: use {_STAGES.index(layout_layer) + 3} "
                             "generator_channels entries")
        dim = self.features.channels(layout_layer)
        self.register_buffer("centroids", torch.zeros(num_clusters, dim))
        self.register_buffer("layout_fitted", torch.tensor(False))

    # --- layout -------------------------------------------------------------------------------
    def _layout_vectors(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """B×D×h×w stage features → L2-normalised per-pixel vectors (B·h·w)×D."""
        f = F.normalize(features[self.layout_layer], dim=1)
        return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])

    @torch.no_grad()
    def fit_layout(self, batches: Iterable[torch.Tensor], max_vectors: int = 200_000, seed: int = 0) -> None:
        """Fit the K layout centroids by k-means on the features of the given (training) images."""
        vectors = []
        for images in batches:
            vectors.append(self._layout_vectors(self.features(images.to(self.centroids.device))))
        if not vectors:
            raise ValueError("fit_layout got no training images")
        x = torch.cat(vectors)
        if x.shape[0] > max_vectors:
            keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_vectors]
            x = x[keep.to(x.device)]
        self.centroids.copy_(kmeans(x, self.num_clusters, seed=seed).to(self.centroids))
        self.layout_fitted.fill_(True)

    def layout_from_features(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """One-hot layout B×K×h×w: every feature pixel assigned to its nearest centroid."""
        if not bool(self.layout_fitted):
            raise RuntimeError("SynthCP layout is not fitted: call fit_layout() on the training images")
        f = features[self.layout_layer]
        b, _, h, w = f.shape
        labels = _squared_distances(self._layout_vectors(features), self.centroids).argmin(1)
        return F.one_hot(labels, self.num_clusters).reshape(b, h, w, -1).permute(0, 3, 1, 2).float()

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.layout_from_features(self.features(images))

    # --- synthesis and comparison ---------------------------------------------------------------
    def synthesize(self, layout: torch.Tensor) -> torch.Tensor:
        """Layout → synthetic image in [0, 1]."""
        return (self.generator(layout) + 1.0) / 2.0

    def compare(self, features: dict[str, torch.Tensor], synthesis_features: dict[str, torch.Tensor],
                size: tuple[int, int]) -> torch.Tensor:
        """Mean over compare_layers of the upsampled per-pixel cosine distance: B×H×W."""
        maps = [
            F.interpolate(cosine_distance_map(features[n], synthesis_features[n])[:, None], size=size,
                          mode="bilinear", align_corners=False)[:, 0]
            for n in self.compare_layers
        ]
        return torch.stack(maps).mean(0)

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        """B×3×S×S in [0, 1] → comparison map B×S×S and its pooled image score (anobench.metrics.pooling.MAP_POOLING)."""
        with torch.no_grad():
            features = self.features(images)
            synthesis = self.synthesize(self.layout_from_features(features))
            anomaly_map = self.compare(features, self.features(synthesis), tuple(images.shape[-2:]))
            return AnomalyOutput(anomaly_map=anomaly_map, pred_score=pool_maps(anomaly_map, MAP_POOLING))
