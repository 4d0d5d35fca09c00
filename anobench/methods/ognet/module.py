"""Lightning side of OGNet: the two-phase schedule, G_old snapshot and the four-kind phase-two loss.

Every training step is exactly one optimiser update (see components/gan.py), so the schedule is in
trainer steps and ``max_steps`` bounds it. The step budget T (``trainer.estimated_stepping_batches``:
``max_steps``, or epochs × batches when ``max_steps = -1``) is split at fit start:

- phase one, steps [0, P1): D and G alternate (D on even steps, G on odd). D: real x → 1, G(x̃) → 0
  with x̃ = x + N(0, noise_std²) (the denoising input of ALOCC, which OGNet's phase one follows);
  G: non-saturating adversarial loss + λ_R · ‖x − G(x̃)‖². At step ``g_old_step`` (a fraction
  ``g_old_fraction`` into phase one) G is copied into the frozen G_old.
- phase two, steps [P1, T): G and G_old frozen (eval mode, no updates); only D is trained, on one
  batch of the four kinds the paper names: good = real x (weight β) and G(x) (1 − β), label 1;
  bad = G_old(x) (weight α) and pseudo-anomalies G((G_old(x_i) + G_old(x_j)) / 2) for random
  pairs i ≠ j (1 − α), label 0.

P2 = round(phase_two_fraction · T) (at least 1), P1 = T − P2 (at least 1); a budget that cannot
hold one step of each phase is refused with a clear error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anobench.errors import ConfigError
from anobench.methods.base import AnomalyModule, OptimizerFactory
from anobench.methods.components.gan import (
    adversarial_loss,
    alternating_role,
    discriminator_loss,
    gan_update,
    gan_update_parts,
    generator_loss,
)
from anobench.methods.ognet.torch_model import OGNetModel
from anobench.methods.registry import register_method


@dataclass(frozen=True)
class OGNetSchedule:
    """Step boundaries: phase one is [0, phase_one_steps), phase two the next phase_two_steps."""

    phase_one_steps: int
    g_old_step: int
    phase_two_steps: int


def resolve_schedule(total_steps: float, phase_two_fraction: float, g_old_fraction: float) -> OGNetSchedule:
    """Split a step budget into the two phases; refuse budgets that cannot hold both."""
    if not 0.0 < phase_two_fraction < 1.0:
        raise ConfigError(f"ognet phase_two_fraction must be in (0, 1), got {phase_two_fraction}")
    if not 0.0 <= g_old_fraction < 1.0:
        raise ConfigError(f"ognet g_old_fraction must be in [0, 1), got {g_old_fraction}")
    if not math.isfinite(total_steps):
        raise ConfigError("ognet splits its training budget into two phases, so it needs a finite budget: "
                          "set trainer max_steps (method.budget.max_steps) or max_epochs")
    total = int(total_steps)
    if total < 2:
        raise ConfigError(f"ognet needs a budget of at least 2 training steps (one per phase), got {total}; "
                          "raise max_steps / max_epochs")
    phase_two = min(max(1, round(phase_two_fraction * total)), total - 1)
    phase_one = total - phase_two
    g_old = min(round(g_old_fraction * phase_one), phase_one - 1)
    return OGNetSchedule(phase_one_steps=phase_one, g_old_step=g_old, phase_two_steps=phase_two)


@register_method("ognet")
class OGNet(AnomalyModule):
    """OGNet, "Old is Gold" (Zaheer et al., CVPR 2020). See README.md next to this file."""

    def __init__(
        self,
        image_size: int = 64,
        generator_channels: tuple[int, ...] = (32, 64, 128, 256),
        discriminator_channels: tuple[int, ...] = (32, 64, 128, 256),
        kernel_size: int = 5,
        discriminator_norm: str | None = "instance",
        discriminator_head: str = "patch",
        discriminator_kernel_size: int | None = 4,
        noise_std: float = 0.1,
        lambda_reconstruction: float = 0.4,
        adversarial_mode: str = "bce",
        phase_two_fraction: float = 0.2,
        g_old_fraction: float = 0.3,
        alpha: float = 0.5,
        beta: float = 0.5,
        phase_two_lr_factor: float = 1.0,
        map_sigma: float = 2.0,
        map_standardize: bool = False,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.save_hyperparameters(ignore=["optimizer"])
        self.automatic_optimization = False
        self.noise_std = noise_std
        self.lambda_reconstruction = lambda_reconstruction
        self.adversarial_mode = adversarial_mode
        self.phase_two_fraction = phase_two_fraction
        self.g_old_fraction = g_old_fraction
        self.alpha = alpha
        self.beta = beta
        self.phase_two_lr_factor = phase_two_lr_factor
        self.map_standardize = map_standardize
        self.model = OGNetModel(image_size, 3, generator_channels, discriminator_channels, kernel_size,
                                discriminator_norm, discriminator_head, discriminator_kernel_size, map_sigma)
        self.schedule: OGNetSchedule | None = None
        self._phase_two_started = False

    # --- optimisers and schedule --------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """[D optimiser, G optimiser], both from the YAML factory; G_old has none (frozen)."""
        return [
            self.optimizer_factory(self.model.discriminator.parameters()),
            self.optimizer_factory(self.model.generator.parameters()),
        ]

    def on_fit_start(self) -> None:
        self.schedule = resolve_schedule(self.trainer.estimated_stepping_batches, self.phase_two_fraction,
                                         self.g_old_fraction)
        self._phase_two_started = False

    def phase(self, step: int) -> int:
        """1 or 2 for a training step under the resolved schedule."""
        if self.schedule is None:
            raise RuntimeError("OGNet schedule not resolved: training must go through trainer.fit")
        return 1 if step < self.schedule.phase_one_steps else 2

    # --- losses --------------------------------------------------------------------------------
    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.noise_std * torch.randn_like(x) if self.noise_std > 0 else x

    def phase_one_d_loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fake = self.model.generator(self._noisy(x))
        logits = self.model.discriminator(torch.cat([x, fake]))
        real_logits, fake_logits = logits.split(x.shape[0])
        return discriminator_loss(real_logits, fake_logits, self.adversarial_mode)

    def phase_one_g_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        reconstruction = self.model.generator(self._noisy(x))
        adversarial = generator_loss(self.model.discriminator(reconstruction), self.adversarial_mode)
        reconstruction_loss = F.mse_loss(reconstruction, x)
        return {"loss_g_adv": adversarial, "loss_g_rec": reconstruction_loss,
                "loss_g": adversarial + self.lambda_reconstruction * reconstruction_loss}

    @torch.no_grad()
    def phase_two_examples(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four kinds of D's phase-two input: real, G(x) (good); G_old(x), pseudo-anomalies (bad)."""
        old = self.model.generator_old(x)
        n = x.shape[0]
        if n > 1:  # partner j ≠ i for every i: a random permutation shifted by a random non-zero offset
            order = torch.randperm(n, device=x.device)
            offset = int(torch.randint(1, n, ()))
            partner = torch.empty_like(order)
            partner[order] = order.roll(-offset)
        else:
            partner = torch.zeros(1, dtype=torch.long, device=x.device)
        pseudo = self.model.generator(0.5 * (old + old[partner]))  # the paper: G of the blend, not G_old
        return {"real": x, "reconstruction": self.model.generator(x), "old": old, "pseudo": pseudo}

    def phase_two_loss(self, examples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """β·ℓ(D(x),1) + (1−β)·ℓ(D(G(x)),1) + α·ℓ(D(G_old(x)),0) + (1−α)·ℓ(D(pseudo),0)."""
        kinds = ("real", "reconstruction", "old", "pseudo")
        logits = self.model.discriminator(torch.cat([examples[k] for k in kinds]))
        real, recon, old, pseudo = logits.split([examples[k].shape[0] for k in kinds])
        mode = self.adversarial_mode
        parts = {
            "loss_d2_real": adversarial_loss(real, 1.0, mode),
            "loss_d2_reconstruction": adversarial_loss(recon, 1.0, mode),
            "loss_d2_old": adversarial_loss(old, 0.0, mode),
            "loss_d2_pseudo": adversarial_loss(pseudo, 0.0, mode),
        }
        parts["loss_d2"] = (self.beta * parts["loss_d2_real"] + (1 - self.beta) * parts["loss_d2_reconstruction"]
                            + self.alpha * parts["loss_d2_old"] + (1 - self.alpha) * parts["loss_d2_pseudo"])
        return parts

    # --- inference -----------------------------------------------------------------------------
    def prepare_inference(self, train_loader) -> None:
        """With ``map_standardize``: per-pixel residual statistics of the frozen G on the training images.

        Off by default: on the synthetic test setting it lowered pixel AUROC (README "Pixel map").
        """
        if not self.map_standardize:
            return
        self.model.eval()
        self.model.fit_residual_statistics(b["image"] if isinstance(b, dict) else b for b in train_loader)

    # --- training -------------------------------------------------------------------------------
    def _enter_phase_two(self, d_opt) -> None:
        for group in d_opt.param_groups:  # idempotent (the phase-one lr is kept in the group), so resumes are safe
            group["lr"] = group.setdefault("phase_one_lr", group["lr"]) * self.phase_two_lr_factor
        self._phase_two_started = True

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        d_opt, g_opt = self.optimizers()
        step = self.global_step
        x = self.model.normalize(batch["image"])
        n = x.shape[0]
        logs: dict[str, torch.Tensor] = {}
        if self.phase(step) == 1:
            if step == self.schedule.g_old_step:
                self.model.snapshot_old_generator(step)
            self.model.generator.train()
            if alternating_role(step) == "D":
                logs["loss_d"] = gan_update(self, d_opt, lambda: self.phase_one_d_loss(x))
            else:
                logs.update(gan_update_parts(self, g_opt, lambda: self.phase_one_g_losses(x), "loss_g"))
        else:
            if not self.model.has_old_generator:
                raise RuntimeError("OGNet reached phase two without a G_old snapshot")
            if not self._phase_two_started:
                self._enter_phase_two(d_opt)
            self.model.generator.eval()  # frozen: no updates, no BN-statistics drift
            examples = self.phase_two_examples(x)
            logs.update(gan_update_parts(self, d_opt, lambda: self.phase_two_loss(examples), "loss_d2"))
        logs["phase"] = torch.tensor(float(self.phase(step)))
        for name, value in logs.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss_d", "loss_g", "loss_d2"), batch_size=n)
