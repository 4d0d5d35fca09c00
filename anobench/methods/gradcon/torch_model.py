"""GradCon's autoencoder, its reference gradients and the per-image gradient-based score.

The network is the official `GradConCAE` (4×4 convolutions, stride 2, ReLU, no batch norm, sigmoid
output) built from the shared `ConvEncoder`/`ConvDecoder`. What makes it GradCon is the state next
to the weights: one *reference gradient* per decoder layer — the running mean of every training
step's gradient w.r.t. that layer's weight — and the step count. Both are registered buffers, so a
checkpoint carries everything the score needs.

Score (official `gradcon_score`, batch size 1 there): for each test image backpropagate its own
reconstruction MSE to the decoder weights and compare that gradient with the reference,

    normality = −MSE + w · mean_layers cos(∂MSE/∂W_l, reference_l)       (w = 0.12)

anobench wants higher = more anomalous, so `pred_score = MSE − w · mean cos`. The per-image
gradients of a whole batch are computed at once with `torch.func` (vmap over per-image grads of the
decoder only; the encoder does not depend on the decoder weights, so it runs once, batched).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from anobench.methods.base import AnomalyOutput
from anobench.methods.components import ConvDecoder, ConvEncoder, reconstruction_error_map

PAPER_CHANNELS = (32, 32, 64, 64)  # official GradConCAE encoder widths; the decoder mirrors them


def gradient_cosine(gradient: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two same-shaped tensors seen as flat vectors (official: view(-1, 1), dim 0).

    A zero reference (before the first update) gives 0, as the official code does with its eps.
    """
    return F.cosine_similarity(gradient.reshape(-1), reference.reshape(-1), dim=0, eps=1e-8)


class GradConModel(nn.Module):
    """Convolutional autoencoder + reference gradients; eval-mode `forward` scores images.

    Args:
        in_channels: image channels (3: MVTec AD images are loaded as RGB).
        channels: encoder widths, one stride-2 layer each; the decoder mirrors them. The paper's
            (32, 32, 64, 64) turns a 256×256 image into a 16×16×64 code.
        score_grad_weight: w in ``MSE − w·mean cos`` (official eval default 0.12).
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = PAPER_CHANNELS,
        score_grad_weight: float = 0.12,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must list at least one encoder width")
        self.score_grad_weight = float(score_grad_weight)
        self.encoder = ConvEncoder(in_channels, channels, kernel_size=4, stride=2, batch_norm=False,
                                   act="relu", last_activation=True)
        self.decoder = ConvDecoder(channels[-1], channels[-2::-1], in_channels, kernel_size=4, stride=2,
                                   batch_norm=False, act="relu", output_act="sigmoid")
        self.downsampling = self.encoder.downsampling
        # Names of the constrained weights inside `self.decoder` (for functional_call) and buffers.
        index = {id(m): name for name, m in self.decoder.named_children()}
        self._weight_names = [f"{index[id(layer)]}.weight" for layer in self.decoder.weight_layers]
        for i, layer in enumerate(self.decoder.weight_layers):
            self.register_buffer(f"reference_grad_{i}", torch.zeros_like(layer.weight))
        self.register_buffer("reference_count", torch.zeros((), dtype=torch.long))

    # --- reference gradients ----------------------------------------------------------------
    def constrained_weights(self) -> list[nn.Parameter]:
        """Decoder transposed-conv weights, input side first (the layers GradCon constrains)."""
        return [layer.weight for layer in self.decoder.weight_layers]

    def reference_gradients(self) -> list[torch.Tensor]:
        return [getattr(self, f"reference_grad_{i}") for i in range(len(self._weight_names))]

    @property
    def has_reference(self) -> bool:
        """False until the first training step has been averaged in (the gradient loss is 0 then)."""
        return bool(self.reference_count.item() > 0)

    @torch.no_grad()
    def update_reference(self, gradients: Sequence[torch.Tensor]) -> None:
        """Fold one step's gradients into the running mean: ref_t = ref_{t−1} + (g_t − ref_{t−1}) / t.

        That is the official `AverageMeter.update(grad, n=1)` (sum / count over every step so far,
        never reset between epochs), kept as mean + count instead of sum + count. A step with any
        non-finite gradient (a 16-mixed overflow, which the grad scaler skips too) is left out: it would
        make the mean inf/NaN for the rest of training. Decided on the device, no host sync per step.
        """
        references = self.reference_gradients()
        if len(gradients) != len(references):
            raise ValueError(f"expected {len(references)} gradients, got {len(gradients)}")
        grads = [grad.detach().to(ref.dtype) for ref, grad in zip(references, gradients)]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        self.reference_count += finite.to(self.reference_count.dtype)
        step = self.reference_count.clamp_min(1).to(references[0].dtype)
        for ref, grad in zip(references, grads):
            ref.add_(torch.where(finite, (grad - ref) / step, torch.zeros_like(ref)))

    def gradient_cosines(self, gradients: Sequence[torch.Tensor]) -> torch.Tensor:
        """cos(gradient_l, reference_l) for every constrained layer l → tensor of shape (L,)."""
        return torch.stack([gradient_cosine(g, r) for g, r in zip(gradients, self.reference_gradients())])

    # --- reconstruction ---------------------------------------------------------------------
    def check_size(self, images: torch.Tensor) -> None:
        height, width = images.shape[-2:]
        if height % self.downsampling or width % self.downsampling:
            raise ValueError(f"GradCon needs image sides divisible by {self.downsampling} "
                             f"({len(self._weight_names)} stride-2 layers); got {height}×{width}")

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (the official code feeds ToTensor output, no normalisation) → reconstructions."""
        self.check_size(images)
        return self.decoder(self.encoder(images))

    # --- scoring ----------------------------------------------------------------------------
    def per_image_terms(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: reconstruction MSE (B), cosines with the references (B×L), reconstructions.

        Each image's gradient is that of its own MSE, exactly as the official batch-size-1 loop.
        Nothing touches the module's parameters or their `.grad` (functional gradients of detached
        copies), and it works inside Lightning's inference_mode test loop.
        """
        self.check_size(images)
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()  # an inference tensor cannot enter autograd
            decoder_params = {name: p.detach() for name, p in self.decoder.named_parameters()}
            weights = tuple(decoder_params.pop(name) for name in self._weight_names)
            with torch.no_grad():
                codes = self.encoder(images)

            def image_mse(weights_: tuple[torch.Tensor, ...], code: torch.Tensor, image: torch.Tensor):
                params = {**decoder_params, **dict(zip(self._weight_names, weights_))}
                recon = functional_call(self.decoder, params, (code.unsqueeze(0),))
                return F.mse_loss(recon, image.unsqueeze(0)), recon.squeeze(0)

            def image_terms(code: torch.Tensor, image: torch.Tensor):
                grads, (mse, recon) = grad_and_value(image_mse, has_aux=True)(weights, code, image)
                return mse, self.gradient_cosines(grads), recon

            mse, cosines, recons = vmap(image_terms)(codes, images)
        return mse.detach(), cosines.detach(), recons.detach()

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        mse, cosines, recons = self.per_image_terms(images)
        mean_cos = cosines.mean(dim=1)
        return AnomalyOutput(
            # Per-pixel squared residual: the pixel-level term of the MSE in the score (see README).
            anomaly_map=reconstruction_error_map(images, recons, squared=True),
            pred_score=mse - self.score_grad_weight * mean_cos,
            score_parts=torch.stack([mse, mean_cos], dim=1),
        )
