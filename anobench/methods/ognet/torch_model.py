"""OGNet networks (Zaheer et al., CVPR 2020) as plain torch modules — no Lightning here.

`OGNetModel` holds the three networks inference and training need, all in its state_dict:

- ``generator`` G: a (denoising) convolutional autoencoder, built from the shared
  `ConvEncoder`/`ConvDecoder` (5×5 kernels, BN + ReLU, tanh output, as the official network.py;
  strided instead of the official unpadded stride-1 stack, so 64×64 RGB fits a CPU — see README).
- ``generator_old`` G_old: a frozen snapshot of G taken early in phase one (`snapshot_old_generator`),
  always in eval mode, never trained. Saved in checkpoints like any submodule; ``g_old_step``
  records the training step it was taken at (−1 = not taken yet).
- ``discriminator`` D: 4×4 stride-2 convs, instance norm + ReLU, no norm on the last conv, and a
  PatchGAN head (one logit per patch; the image-level output is their mean) by default. The official
  shape — 5×5 convs, BN, flatten → linear → one logit — is ``discriminator_head="linear"``,
  ``discriminator_norm="batch"``, ``discriminator_kernel_size=None`` (below chance on local defects;
  see README "Results").

Inference (eval mode): images in [0, 1] → x = 2·img − 1 (official mean 0.5 / std 0.5) → G(x) →
D(G(x)). The paper's score is D's output on G(x) (high = normal), so ``pred_score`` is −logit
(the log-odds of "bad quality"; a monotone map of 1 − D, without sigmoid saturation ties). The paper
has no pixel map; ``anomaly_map`` is G's reconstruction residual ‖x − G(x)‖₂ over channels,
optionally standardised per pixel with the normal training images' mean and std (`fit_residual_statistics`,
buffers ``residual_mean`` / ``residual_std``; identity until fitted), then Gaussian-smoothed
(σ = ``map_sigma``) — an anobench addition that the image score does not use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from anobench.methods.base import AnomalyOutput
from anobench.methods.components import ConvDecoder, ConvEncoder, reconstruction_error_map
from anobench.methods.components.scoring import gaussian_blur
from anobench.methods.components.gan import build_discriminator, frozen_copy


class Generator(nn.Module):
    """Autoencoder G: strided ConvEncoder (BN + ReLU) → mirrored ConvDecoder → tanh image in [−1, 1]."""

    def __init__(self, in_channels: int, channels: Sequence[int], kernel_size: int = 5) -> None:
        super().__init__()
        channels = tuple(channels)
        self.encoder = ConvEncoder(in_channels, channels, kernel_size=kernel_size, stride=2, act="relu")
        self.decoder = ConvDecoder(channels[-1], channels[-2::-1], in_channels, kernel_size=kernel_size,
                                   stride=2, act="relu", output_act="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class OGNetModel(nn.Module):
    """G, G_old and D; eval-mode forward maps [0, 1] images to an `AnomalyOutput`."""

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        generator_channels: Sequence[int] = (32, 64, 128, 256),
        discriminator_channels: Sequence[int] = (32, 64, 128, 256),
        kernel_size: int = 5,
        discriminator_norm: str | None = "instance",
        discriminator_head: str = "patch",
        discriminator_kernel_size: int | None = 4,
        map_sigma: float = 2.0,
    ) -> None:
        super().__init__()
        depth = len(generator_channels)
        if image_size % (2**depth):
            raise ValueError(f"OGNet image_size {image_size} must be a multiple of 2^{depth} "
                             f"(the generator halves it {depth} times)")
        self.image_size = image_size
        self.generator = Generator(in_channels, generator_channels, kernel_size)
        self.generator_old = frozen_copy(self.generator)
        self.discriminator = build_discriminator(
            in_channels, discriminator_channels, head=discriminator_head, input_size=image_size,
            kernel_size=kernel_size if discriminator_kernel_size is None else discriminator_kernel_size,
            norm=discriminator_norm, act="relu", unnormalized_layers=(-1,),
        )
        self.register_buffer("g_old_step", torch.tensor(-1, dtype=torch.long))
        # pixel map: G's residual standardised per pixel with the training images' statistics
        # (identity until `fit_residual_statistics` has run), then Gaussian-smoothed with σ = map_sigma
        self.map_sigma = map_sigma
        self.register_buffer("residual_mean", torch.zeros(image_size, image_size))
        self.register_buffer("residual_std", torch.ones(image_size, image_size))

    # --- G_old --------------------------------------------------------------------------------
    @property
    def has_old_generator(self) -> bool:
        return int(self.g_old_step) >= 0

    @torch.no_grad()
    def snapshot_old_generator(self, step: int) -> None:
        """Freeze the current G (weights and BN statistics) as G_old; remember the step."""
        self.generator_old.load_state_dict(self.generator.state_dict())
        self.generator_old.eval()
        self.g_old_step.fill_(int(step))

    def train(self, mode: bool = True) -> "OGNetModel":
        super().train(mode)
        self.generator_old.eval()  # a frozen snapshot: its BN statistics must never move
        return self

    # --- maps --------------------------------------------------------------------------------
    @staticmethod
    def normalize(images: torch.Tensor) -> torch.Tensor:
        """[0, 1] → [−1, 1] (official Normalize(mean 0.5, std 0.5)), the range of G's tanh output."""
        return images * 2.0 - 1.0

    @torch.no_grad()
    def fit_residual_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Per-pixel mean and std of ‖x − G(x)‖₂ over normal training images ([0, 1] batches).

        The std is floored at 10 % of its mean over pixels, so pixels where G is (nearly) exact on every
        training image — flat background — cannot turn float noise into large standardised values.
        """
        residuals = torch.cat([reconstruction_error_map(x, self.generator(x))
                               for x in (self.normalize(b.to(self.residual_mean.device)) for b in batches)])
        if residuals.shape[-2:] != self.residual_mean.shape:
            raise ValueError(f"OGNet residual statistics need {tuple(self.residual_mean.shape)} maps, "
                             f"got {tuple(residuals.shape[-2:])}")
        mean = residuals.mean(dim=0)
        std = residuals.std(dim=0, unbiased=False) if residuals.shape[0] > 1 else torch.ones_like(mean)
        self.residual_mean.copy_(mean)
        self.residual_std.copy_(std.clamp_min(0.1 * float(std.mean()) + 1e-8))

    def anomaly_map(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Standardised, smoothed residual: blur_σ((‖x − G(x)‖₂ − μ_pixel) / σ_pixel), B×S×S."""
        residual = reconstruction_error_map(x, reconstruction)
        return gaussian_blur((residual - self.residual_mean) / self.residual_std, self.map_sigma)

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        """B×3×S×S in [0, 1] → score −D(G(x)) logit (B) and standardised residual map (B×S×S)."""
        with torch.no_grad():
            x = self.normalize(images)
            reconstruction = self.generator(x)
            logits = self.discriminator(reconstruction)
            if logits.ndim > 1:  # patch head: D's per-image output is the mean patch logit
                logits = logits.flatten(1).mean(dim=1)
            return AnomalyOutput(anomaly_map=self.anomaly_map(x, reconstruction), pred_score=-logits)
