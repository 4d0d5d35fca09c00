"""Lightning side of SynthCP: layout fitting at fit start, alternating conditional-GAN updates.

One optimiser update per training step (components/gan.py): even steps update the conditional
PatchGAN discriminator D(image, layout) — real (x, layout(x)) → 1, (G(layout(x)), layout(x)) → 0 —
odd steps the generator, with

    L_G = λ_adv · L_adv + λ_L1 · ‖G(layout) − x‖₁ + λ_feat · mean_layers(1 − cos(φ(G(layout)), φ(x)))

(pix2pix's adversarial + L1; SPADE's perceptual term, here through the frozen feature network φ the
comparison module uses, so a normal image's synthesis is pulled towards it in exactly the space it is
later compared in).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from anobench.backbones import build_backbone
from anobench.methods.base import AnomalyModule, OptimizerFactory
from anobench.methods.components.gan import (
    alternating_role,
    build_discriminator,
    discriminator_loss,
    gan_update,
    gan_update_parts,
    generator_loss,
)
from anobench.methods.registry import register_method
from anobench.methods.synthcp.torch_model import SynthCPModel, cosine_distance_map
from anobench.metrics.pooling import MAP_POOLING

log = logging.getLogger(__name__)


def _images(loader):
    for batch in loader:
        yield batch["image"] if isinstance(batch, dict) else batch


@register_method("synthcp")
class SynthCP(AnomalyModule):
    """SynthCP, "Synthesize then Compare" (Xia et al., ECCV 2020), adapted. See README.md next to this file."""

    image_score_pooling = MAP_POOLING  # the paper defines no image score

    def __init__(
        self,
        backbone: str | None = "resnet18",
        pretrained: bool = True,
        weights_path: str | None = None,
        num_clusters: int = 8,
        layout_layer: str = "layer2",
        compare_layers: tuple[str, ...] = ("layer1",),
        generator_channels: tuple[int, ...] = (128, 64, 32, 16),
        spade_hidden: int = 32,
        discriminator_channels: tuple[int, ...] = (32, 64, 128),
        adversarial_mode: str = "hinge",
        lambda_adversarial: float = 1.0,
        lambda_l1: float = 10.0,
        lambda_feature: float = 10.0,
        kmeans_seed: int = 0,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.automatic_optimization = False
        arch = backbone or "resnet18"
        if not pretrained:
            log.warning("SynthCP: backbone %s has random weights (pretrained=false); layouts and comparisons "
                        "use random features — fine for tests, use backbone=resnet18 for real runs", arch)
        self.model = SynthCPModel(build_backbone(arch, pretrained=pretrained, weights_path=weights_path),
                                  num_clusters, layout_layer, compare_layers, generator_channels, spade_hidden)
        self.discriminator = build_discriminator(3 + num_clusters, discriminator_channels, head="patch",
                                                 kernel_size=4, norm="instance", act="leaky_relu")
        self.adversarial_mode = adversarial_mode
        self.lambda_adversarial = lambda_adversarial
        self.lambda_l1 = lambda_l1
        self.lambda_feature = lambda_feature
        self.kmeans_seed = kmeans_seed

    # --- layout -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Fit the layout centroids on the training images (un-augmented, every image once)."""
        self.model.fit_layout(_images(self.data().inference_train_dataloader()), seed=self.kmeans_seed)

    def prepare_inference(self, train_loader) -> None:
        if not bool(self.model.layout_fitted):  # e.g. testing an untrained model
            self.model.fit_layout(_images(train_loader), seed=self.kmeans_seed)

    # --- training -------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[D optimiser, G optimiser]; the feature network is frozen and has none."""
        return [self.optimizer_factory(self.discriminator.parameters()),
                self.optimizer_factory(self.model.generator.parameters())]

    def _discriminate(self, images01: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        layout_full = F.interpolate(layout, size=images01.shape[-2:], mode="nearest")
        return self.discriminator(torch.cat([images01 * 2 - 1, layout_full], dim=1))

    def d_loss(self, images: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fake = self.model.synthesize(layout)
        return discriminator_loss(self._discriminate(images, layout), self._discriminate(fake, layout),
                                  self.adversarial_mode)

    def g_losses(self, images: torch.Tensor, layout: torch.Tensor,
                 features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        fake = self.model.synthesize(layout)
        fake_features = self.model.features(fake)
        out = {
            "loss_g_adv": generator_loss(self._discriminate(fake, layout), self.adversarial_mode),
            "loss_g_l1": (fake - images).abs().mean(),
            "loss_g_feature": torch.stack([cosine_distance_map(features[n], fake_features[n]).mean()
                                           for n in self.model.compare_layers]).mean(),
        }
        out["loss_g"] = (self.lambda_adversarial * out["loss_g_adv"] + self.lambda_l1 * out["loss_g_l1"]
                         + self.lambda_feature * out["loss_g_feature"])
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        d_opt, g_opt = self.optimizers()
        images = batch["image"]
        with torch.no_grad():
            features = self.model.features(images)
            layout = self.model.layout_from_features(features)
        logs: dict[str, torch.Tensor] = {}
        if alternating_role(self.global_step) == "D":
            logs["loss_d"] = gan_update(self, d_opt, lambda: self.d_loss(images, layout))
        else:
            logs.update(gan_update_parts(self, g_opt, lambda: self.g_losses(images, layout, features), "loss_g"))
        for name, value in logs.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss_d", "loss_g"), batch_size=images.shape[0])
