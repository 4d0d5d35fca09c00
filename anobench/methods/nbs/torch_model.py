"""Neural Batch Sampling networks (Chu & Kitani, ECCV 2020) as plain torch modules.

- `PatchAutoencoder`: a small fully convolutional AE. It trains on 32×32 patches; because it is fully
  convolutional, one pass over a whole image gives every pixel's reconstruction loss (what the loss
  profiles record).
- `LossProfileBuffer`: per tracked image, the last T per-cell loss maps (a FIFO), plus a thumbnail
  fingerprint of the image so that inference can find an image's profile from the image alone.
- `ProfilePredictor`: T-channel profile map → per-cell anomaly logit (3×3 convs: each cell sees its
  own profile and its neighbours').
- `SamplerPolicy`: the neural batch sampler; a state map of an image → categorical distribution over
  the grid of patch locations.
- `NBSModel`: the inference path. NBS is transductive — an image's score *is* a function of its
  loss history during training — so eval-mode ``model(images)`` looks each image up in the buffer
  (by fingerprint) and runs the predictor on its profile. Everything it needs is in the state_dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anobench.methods.base import AnomalyOutput
from anobench.methods.components import ConvDecoder, ConvEncoder
from anobench.metrics.pooling import MAP_POOLING, pool_maps

_LOG_EPS = 1e-6
FINGERPRINT_SIDE = 8  # images are identified by their 8×8 average-pooled thumbnail
FINGERPRINT_TOLERANCE = 1e-4  # max abs difference of two thumbnails of the same image


class PatchAutoencoder(nn.Module):
    """Strided-conv encoder / transposed-conv decoder (shared components), sigmoid output in [0, 1]."""

    def __init__(self, channels: Sequence[int] = (16, 32, 16)) -> None:
        super().__init__()
        channels = list(channels)
        self.encoder = ConvEncoder(3, channels, kernel_size=4, stride=2, batch_norm=False, act="leaky_relu",
                                   last_activation=True)
        self.decoder = ConvDecoder(channels[-1], channels[-2::-1], 3, kernel_size=4, stride=2, batch_norm=False,
                                   act="leaky_relu", output_act="sigmoid")
        self.downsampling = self.encoder.downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def loss_map(self, images: torch.Tensor, cell: int) -> torch.Tensor:
        """Per-cell mean squared reconstruction error of whole images: B×3×S×S → B×(S/cell)×(S/cell)."""
        err = (self(images) - images).pow(2).mean(dim=1, keepdim=True)
        return F.avg_pool2d(err, cell)[:, 0]


def normalize_profiles(profiles: torch.Tensor) -> torch.Tensor:
    """log-loss minus the image's median log-loss at the same iteration: B×T×h×w → B×T×h×w.

    Why: the AE's loss falls for every image as training goes on and differs between images in
    level; what separates anomalies is a cell's loss *relative to the rest of its image* and how it
    moves. The median is robust to the (small) defective area.
    """
    logs = torch.log(profiles.clamp_min(0) + _LOG_EPS)
    return logs - logs.flatten(2).median(dim=2).values[..., None, None]


class ProfilePredictor(nn.Module):
    """Normalised T-channel loss-profile map → per-cell anomaly logit.

    A 1×1 conv first reads each cell's own profile (T → width temporal features), then two 3×3 convs
    (dilation 1 and 2) look at the neighbourhood (receptive field 7×7 cells). Kept small on purpose:
    it learns from a handful of labelled images and overfits them easily.
    """

    def __init__(self, profile_length: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(profile_length, width, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, profiles: torch.Tensor) -> torch.Tensor:
        """Raw profiles B×T×h×w (losses) → logits B×h×w."""
        return self.net(normalize_profiles(profiles))[:, 0]


def sampler_state(current_loss: torch.Tensor, profiles: torch.Tensor | None) -> torch.Tensor:
    """The policy's view of an image: [current relative log-loss, fluctuation of the profile] per cell.

    ``profiles`` is None for images without a profile (training images of the batch): fluctuation 0.
    """
    logs = torch.log(current_loss + _LOG_EPS)
    relative = logs - logs.flatten(1).median(dim=1).values[:, None, None]
    if profiles is None:
        fluctuation = torch.zeros_like(relative)
    else:
        norm = normalize_profiles(profiles)
        fluctuation = (norm[:, 1:] - norm[:, :-1]).abs().mean(dim=1)
    return torch.stack([relative, fluctuation], dim=1)


class SamplerPolicy(nn.Module):
    """State B×2×h×w → logits B×(n×n) over patch locations (top-left corners every `stride` cells).

    A per-cell score map (two convs), averaged over each candidate patch's cells: a patch is preferred
    when the cells it covers are.
    """

    def __init__(self, patch_cells: int, stride_cells: int, width: int = 16) -> None:
        super().__init__()
        self.patch_cells = patch_cells
        self.stride_cells = stride_cells
        self.net = nn.Sequential(
            nn.Conv2d(2, width, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1, 1),
        )
        # start as the uniform sampler: a random initial preference (e.g. for high-loss patches)
        # would bias the AE's batches before any reward has been seen
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        score = self.net(state)
        return F.avg_pool2d(score, self.patch_cells, self.stride_cells).flatten(1)


class LossProfileBuffer(nn.Module):
    """FIFO of the last T loss maps of each tracked image, saved in the state_dict.

    ``profiles`` N×T×h×w holds the oldest value at t = 0 and the newest at t = T − 1; ``count`` is the
    number of pushes so far. Before T pushes, `read` pads the front with the oldest value recorded.
    """

    def __init__(self, profile_length: int) -> None:
        super().__init__()
        self.profile_length = profile_length
        self.register_buffer("profiles", torch.zeros(0, profile_length, 0, 0))
        self.register_buffer("fingerprints", torch.zeros(0, 3 * FINGERPRINT_SIDE**2))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @staticmethod
    def fingerprint(images: torch.Tensor) -> torch.Tensor:
        side = images.shape[-1] // FINGERPRINT_SIDE
        return F.avg_pool2d(images.float(), side).flatten(1)

    def reset(self, images: torch.Tensor, cell: int) -> None:
        """Track `images` (N×3×S×S): empty profiles of (S/cell)² cells, fingerprints for look-up."""
        n, _, height, width = images.shape
        device = self.profiles.device
        self.profiles = torch.zeros(n, self.profile_length, height // cell, width // cell, device=device)
        self.fingerprints = self.fingerprint(images).to(device)
        self.count = torch.zeros((), dtype=torch.long, device=device)

    @property
    def n_tracked(self) -> int:
        return self.profiles.shape[0]

    def push(self, loss_maps: torch.Tensor) -> None:
        """Append one N×h×w loss map per tracked image; the oldest value drops out after T pushes."""
        if loss_maps.shape != (self.profiles.shape[0], *self.profiles.shape[2:]):
            raise ValueError(f"loss maps {tuple(loss_maps.shape)} do not match the buffer {tuple(self.profiles.shape)}")
        self.profiles = torch.cat([self.profiles[:, 1:], loss_maps[:, None].to(self.profiles)], dim=1)
        self.count = self.count + 1

    def read(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Profiles (of `rows`, default all), B×T×h×w; fewer than T pushes are front-padded."""
        if int(self.count) == 0:
            raise RuntimeError("no loss profile recorded yet: the model has not been trained")
        profiles = self.profiles if rows is None else self.profiles[rows]
        missing = self.profile_length - int(self.count)
        if missing > 0:
            oldest = profiles[:, missing : missing + 1]
            profiles = torch.cat([oldest.expand(-1, missing, -1, -1), profiles[:, missing:]], dim=1)
        return profiles

    def lookup(self, images: torch.Tensor) -> torch.Tensor:
        """Row of each image in the buffer (by thumbnail); ValueError for an image never tracked."""
        if self.n_tracked == 0:
            raise RuntimeError("the loss-profile buffer is empty: fit the model first")
        query = self.fingerprint(images).to(self.fingerprints)
        diff = (query[:, None] - self.fingerprints[None]).abs().amax(dim=2)
        best, rows = diff.min(dim=1)
        if (best > FINGERPRINT_TOLERANCE).any():
            raise ValueError(
                f"{int((best > FINGERPRINT_TOLERANCE).sum())} image(s) have no loss profile: NBS is transductive and "
                "scores only the images whose loss it tracked during training (the test split it was fitted with)"
            )
        return rows

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # shapes are only known after fitting: adopt the checkpoint's
        for name in ("profiles", "fingerprints"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.zeros_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class NBSModel(nn.Module):
    """AE + loss-profile buffer + predictor + sampler policy; eval forward = the predictor's maps."""

    def __init__(
        self,
        ae_channels: Sequence[int] = (16, 32, 16),
        profile_length: int = 30,
        cell_size: int = 4,
        patch_size: int = 32,
        patch_stride: int = 16,
        predictor_width: int = 16,
        policy_width: int = 16,
    ) -> None:
        super().__init__()
        for name, value in (("patch_size", patch_size), ("patch_stride", patch_stride)):
            if value % cell_size:
                raise ValueError(f"{name}={value} must be a multiple of cell_size={cell_size}")
        self.cell_size = cell_size
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.autoencoder = PatchAutoencoder(ae_channels)
        if patch_size % self.autoencoder.downsampling:
            raise ValueError(f"patch_size={patch_size} must be a multiple of the AE's downsampling "
                             f"{self.autoencoder.downsampling}")
        self.buffer = LossProfileBuffer(profile_length)
        self.predictor = ProfilePredictor(profile_length, predictor_width)
        self.policy = SamplerPolicy(patch_size // cell_size, patch_stride // cell_size, policy_width)

    # --- patch locations ----------------------------------------------------------------------
    def location_grid(self, image_size: int) -> int:
        """Number of patch positions per axis (top-left corners 0, stride, …, S − patch)."""
        if image_size < self.patch_size or (image_size - self.patch_size) % self.patch_stride:
            raise ValueError(f"image size {image_size} must be patch_size {self.patch_size} + a multiple of "
                             f"patch_stride {self.patch_stride}")
        return (image_size - self.patch_size) // self.patch_stride + 1

    def crop(self, images: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        """Patches of `images` (B×3×S×S) at flat grid `locations` (B) → B×3×patch×patch."""
        n = self.location_grid(images.shape[-1])
        rows, cols = (locations // n) * self.patch_stride, (locations % n) * self.patch_stride
        return torch.stack([img[:, r : r + self.patch_size, c : c + self.patch_size]
                            for img, r, c in zip(images, rows.tolist(), cols.tolist())])

    @torch.no_grad()
    def loss_maps(self, images: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        """Current per-cell reconstruction loss of whole images (no gradient), in chunks."""
        return torch.cat([self.autoencoder.loss_map(images[i : i + chunk], self.cell_size)
                          for i in range(0, images.shape[0], chunk)])

    # --- inference ----------------------------------------------------------------------------
    @staticmethod
    def image_scores(anomaly_map: torch.Tensor) -> torch.Tensor:
        """The paper defines no image score: the one map pooling rule (anobench.metrics.pooling.MAP_POOLING)."""
        return pool_maps(anomaly_map, MAP_POOLING)

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        """Tracked images B×3×S×S → predictor probability map B×S×S (bilinear from cells) and image score."""
        with torch.no_grad():
            rows = self.buffer.lookup(images)
            logits = self.predictor(self.buffer.read(rows.to(self.buffer.profiles.device)))
            probs = torch.sigmoid(logits)[:, None]
            anomaly_map = F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            return AnomalyOutput(anomaly_map=anomaly_map, pred_score=self.image_scores(anomaly_map))
