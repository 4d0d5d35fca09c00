"""MNAD, reconstruction variant (Park, Noh, Ham, CVPR 2020), as plain torch modules — no Lightning here.

Follows the official `cvlab-yonsei/MNAD` (model/Reconstruction.py, model/Memory.py, Evaluate.py):

* Encoder: four "double conv 3×3 + BN + ReLU" blocks (64→128→256→512 at base width 64), 2×2 max-pool
  between them; the very last conv has no BN/ReLU. Per-pixel features, L2-normalised over channels,
  are the *queries*.
* Memory: M items (M×C, unit norm), a buffer — never touched by the optimiser. Read: softmax over
  items of query·item; read-out = Σ_m w_m·item_m with the weights detached, concatenated with the
  query (2C channels) for the decoder.
* Update (training, and testing when enabled): every item m moves by the sum of the queries whose
  nearest item it is, each weighted by v_{k,m} / max_k' v_{k',m} where v is the softmax over *queries*
  of the same scores, then is re-normalised: m ← ‖m + Σ_k (v_{k,m}/max v_{·,m}) q_k‖₂-normalised.
* Decoder: conv block on 2C, three (ConvTranspose 3×3 stride 2 + BN + ReLU, double-conv) stages,
  a 3-conv head with tanh; images live in [-1, 1] as in the official code.
* Test: per-image PSNR of the reconstruction and the compactness distance (mean squared distance of
  each query to its nearest item); the memory is updated after an image only when its weighted
  reconstruction error ("point score") is below the threshold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anobench.methods.base import AnomalyOutput
from anobench.methods.components import reconstruction_error_map


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def double_conv(cin: int, cout: int, plain_end: bool = False) -> nn.Sequential:
    """Conv-BN-ReLU twice; ``plain_end`` drops BN/ReLU after the second conv (the encoder's output)."""
    second = [nn.Conv2d(cout, cout, 3, padding=1)] if plain_end else _conv_bn_relu(cout, cout)
    return nn.Sequential(*_conv_bn_relu(cin, cout), *second)


def upsample(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                         nn.BatchNorm2d(cout), nn.ReLU())


class MNADEncoder(nn.Module):
    def __init__(self, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.blocks = nn.ModuleList([double_conv(in_channels, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w),
                                     double_conv(4 * w, 8 * w, plain_end=True)])
        self.out_channels = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
        return x


class MNADDecoder(nn.Module):
    def __init__(self, width: int = 64, out_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            double_conv(16 * w, 8 * w),
            upsample(8 * w, 4 * w), double_conv(4 * w, 4 * w),
            upsample(4 * w, 2 * w), double_conv(2 * w, 2 * w),
            upsample(2 * w, w),
            *_conv_bn_relu(w, w), *_conv_bn_relu(w, w), nn.Conv2d(w, out_channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def memory_scores(queries: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax over queries, softmax over items) of the K×M score matrix query·item."""
    scores = queries @ items.t()
    return torch.softmax(scores, dim=0), torch.softmax(scores, dim=1)


def updated_memory(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """MNAD's memory update: items move by their nearest queries, weighted v_{k,m}/max_k v_{k,m}."""
    over_queries, over_items = memory_scores(queries, items)
    nearest = over_items.argmax(dim=1)  # K
    weights = over_queries / over_queries.max(dim=0, keepdim=True).values  # K×M
    assign = F.one_hot(nearest, items.shape[0]).to(queries.dtype) * weights  # only each query's nearest item
    return F.normalize(items + assign.t() @ queries, dim=1)


def feature_losses(queries: torch.Tensor, items: torch.Tensor, margin: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(compactness, separateness) as in the official code.

    compactness = MSE between each query and its nearest item; separateness = triplet margin loss with
    the nearest item as positive and the second nearest as negative (margin 1).
    """
    _, over_items = memory_scores(queries, items)
    top2 = over_items.topk(2, dim=1).indices
    positive, negative = items[top2[:, 0]], items[top2[:, 1]]
    compactness = F.mse_loss(queries, positive)
    separateness = F.triplet_margin_loss(queries, positive, negative, margin=margin)
    return compactness, separateness


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """10·log10(1 / mse) for images in [0, 1], as the official `utils.psnr`."""
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def point_score(images01: torch.Tensor, recon01: torch.Tensor) -> torch.Tensor:
    """Official test-time gate: reconstruction error weighted by (1 − e^(−error)), one value per image."""
    error = (recon01 - images01).pow(2)
    normal = 1 - torch.exp(-error)
    return (normal * error).flatten(1).sum(dim=1) / normal.flatten(1).sum(dim=1).clamp_min(1e-12)


class MNADModel(nn.Module):
    """Encoder → memory read (+ update) → decoder. Eval mode returns the map and score parts.

    Buffers: ``memory`` (the trained items, updated only by the training rule), ``test_memory`` (a
    copy that test-time updates modify; `reset_test_memory` restores it), and the training-set means
    of the two pixel-map terms that put them on one scale.
    """

    def __init__(self, width: int = 64, memory_size: int = 10, alpha: float = 0.7,
                 update_threshold: float = 0.015, test_time_update: bool = True) -> None:
        super().__init__()
        self.encoder = MNADEncoder(width)
        self.decoder = MNADDecoder(width)
        dim = self.encoder.out_channels
        self.alpha = alpha
        self.update_threshold = update_threshold
        self.test_time_update = test_time_update
        self.register_buffer("memory", F.normalize(torch.rand(memory_size, dim), dim=1))
        self.register_buffer("test_memory", self.memory.clone())
        self.register_buffer("error_scale", torch.ones(()))
        self.register_buffer("distance_scale", torch.ones(()))

    def reset_test_memory(self) -> None:
        self.test_memory.copy_(self.memory)

    @staticmethod
    def queries_of(features: torch.Tensor) -> torch.Tensor:
        """B×C×h×w features → (B·h·w)×C unit-norm queries."""
        return F.normalize(features, dim=1).permute(0, 2, 3, 1).reshape(-1, features.shape[1])

    def read(self, features: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder input [query, read-out] (B×2C×h×w) and the queries ((B·h·w)×C)."""
        b, c, h, w = features.shape
        queries = self.queries_of(features)
        _, over_items = memory_scores(queries, items)
        read = over_items.detach() @ items
        grid = lambda t: t.reshape(b, h, w, c).permute(0, 3, 1, 2)  # noqa: E731
        return torch.cat([grid(queries), grid(read)], dim=1), queries

    def check_size(self, images: torch.Tensor) -> None:
        if images.shape[-1] % 8 or images.shape[-2] % 8:
            raise ValueError(f"MNAD needs image sides divisible by 8 (three 2× poolings), got "
                             f"{tuple(images.shape[-2:])}; set method.input.image_size accordingly")

    def forward_train(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction, queries and the memory after this batch's update (not yet stored)."""
        self.check_size(images)
        x = images * 2 - 1
        decoder_input, queries = self.read(self.encoder(x), self.memory)
        with torch.no_grad():
            new_memory = updated_memory(queries.detach(), self.memory)
        return {"input": x, "reconstruction": self.decoder(decoder_input), "queries": queries,
                "new_memory": new_memory}

    def _score_one(self, image: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One image (1×3×H×W, [0, 1]) against the current test memory; updates it if gated."""
        decoder_input, queries = self.read(features, self.test_memory)
        recon01 = (self.decoder(decoder_input) + 1) / 2
        _, over_items = memory_scores(queries, self.test_memory)
        nearest = self.test_memory[over_items.argmax(dim=1)]
        distance = (queries - nearest).pow(2).mean(dim=1).reshape(features.shape[-2:])  # per position
        if self.test_time_update and point_score(image, recon01).item() < self.update_threshold:
            self.test_memory.copy_(updated_memory(queries, self.test_memory))
        return recon01, distance

    def score_terms(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel squared error (B×H×W, [0, 1] scale, channel mean) and query distances (B×h×w).

        Images are processed one at a time in batch order because each may update the memory that
        the next one reads (the official test loop runs batch size 1).
        """
        self.check_size(images)
        features = self.encoder(images * 2 - 1)
        recons, distances = zip(*(self._score_one(images[i:i + 1], features[i:i + 1])
                                  for i in range(images.shape[0])))
        recon01 = torch.cat(recons)
        error = reconstruction_error_map(images, recon01, squared=True) / images.shape[1]
        return error, torch.stack(distances)

    def forward(self, images: torch.Tensor):
        if self.training:
            return self.forward_train(images)
        error, distance = self.score_terms(images)
        image_psnr = psnr(error.flatten(1).mean(dim=1))
        compactness = distance.flatten(1).mean(dim=1)
        distance_up = F.interpolate(distance[:, None], size=error.shape[-2:], mode="bilinear",
                                    align_corners=False)[:, 0]
        anomaly_map = (self.alpha * error / self.error_scale
                       + (1 - self.alpha) * distance_up / self.distance_scale)
        return AnomalyOutput(anomaly_map=anomaly_map,
                             pred_score=-image_psnr,  # per image; the evaluator uses the test-set score (module)
                             score_parts=torch.stack([image_psnr, compactness], dim=1))
