"""GAN plumbing shared by the adversarial methods (OGNet, SynthCP): one definition each.

- `Discriminator` / `build_discriminator`: a stack of strided convolutions ending either in one logit
  per image (``head="linear"``, OGNet's D) or in a map of patch logits (``head="patch"``, the
  pix2pix/SPADE PatchGAN that SynthCP's conditional generator is trained against).
- `adversarial_loss`, `discriminator_loss`, `generator_loss`: the standard GAN objectives on logits
  ('bce' = the original non-saturating GAN loss, 'lsgan', 'hinge' = SPADE's default).
- `alternating_role`, `gan_update`, `frozen_copy`, `set_requires_grad`: how a Lightning module with
  ``automatic_optimization = False`` alternates D and G updates. Both methods make exactly one
  optimiser update per training step (D on one batch, G on the next, …), so ``trainer.global_step``
  — which Lightning advances once per ``optimizer.step()`` in manual optimisation — equals the
  number of training batches, and ``max_steps`` means the same thing as for every other method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from anobench.methods.components.autoencoder import activation

AdversarialMode = Literal["bce", "lsgan", "hinge"]
Role = Literal["D", "G"]


# --------------------------------------------------------------------------------------------
# discriminator
# --------------------------------------------------------------------------------------------
def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'instance' or null")


class Discriminator(nn.Module):
    """Strided conv stack + head. `forward` returns logits: B (linear head) or B×1×h×w (patch head).

    Layer i is Conv(k, stride 2, 'halving' padding) → norm (unless i is in `unnormalized_layers`) →
    activation. The linear head flattens the last feature map (size = input_size / 2^L, so the
    input size is fixed at construction, as in OGNet's D); the patch head is a k×k stride-1 conv to
    one channel, i.e. one logit per receptive field (PatchGAN), for any input size.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        kernel_size: int = 4,
        norm: str | None = "batch",
        act: str | None = "leaky_relu",
        unnormalized_layers: Sequence[int] = (0,),
        head: Literal["linear", "patch"] = "linear",
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("a discriminator needs at least one conv layer")
        skip = {i % len(channels) for i in unnormalized_layers}
        padding = (kernel_size - 1) // 2  # k=4,s=2: exactly halves; k=5,s=2: ceil-halves
        layers: list[nn.Module] = []
        widths = (in_channels, *channels)
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            normalized = norm is not None and i not in skip
            layers += [
                nn.Conv2d(cin, cout, kernel_size, stride=2, padding=padding, bias=not normalized),
                _norm(norm if normalized else None, cout),
                activation(act),
            ]
        self.features = nn.Sequential(*layers)
        self.head_kind = head
        if head == "linear":
            if input_size is None:
                raise ValueError("a linear-head discriminator needs input_size (its flatten size depends on it)")
            size = input_size
            for _ in channels:
                size = (size + 2 * padding - kernel_size) // 2 + 1
            if size < 1:
                raise ValueError(f"input_size {input_size} is too small for {len(channels)} stride-2 layers")
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels[-1] * size * size, 1))
        elif head == "patch":
            self.head = nn.Conv2d(channels[-1], 1, kernel_size, stride=1, padding=(kernel_size - 1) // 2)
        else:
            raise ValueError(f"unknown discriminator head {head!r}; expected 'linear' or 'patch'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x))
        return logits[:, 0] if self.head_kind == "linear" else logits


def build_discriminator(
    in_channels: int,
    channels: Sequence[int],
    *,
    head: Literal["linear", "patch"] = "linear",
    input_size: int | None = None,
    kernel_size: int = 4,
    norm: str | None = "batch",
    act: str | None = "leaky_relu",
    unnormalized_layers: Sequence[int] = (0,),
) -> Discriminator:
    """A `Discriminator`; defaults are the DCGAN/pix2pix convention (k=4, BN except on the first layer, LReLU 0.2)."""
    return Discriminator(in_channels, channels, kernel_size, norm, act, unnormalized_layers, head, input_size)


# --------------------------------------------------------------------------------------------
# losses on logits
# --------------------------------------------------------------------------------------------
def adversarial_loss(logits: torch.Tensor, target: bool | float, mode: AdversarialMode = "bce") -> torch.Tensor:
    """Mean loss that pushes `logits` towards the label `target` (1 = real/good, 0 = fake/bad).

    'bce': binary cross-entropy on the sigmoid (soft targets allowed); 'lsgan': (logit − target)²;
    'hinge' (discriminator side): relu(1 − logit) for real, relu(1 + logit) for fake.
    """
    t = float(target)
    if mode == "bce":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, t))
    if mode == "lsgan":
        return (logits - t).pow(2).mean()
    if mode == "hinge":
        if t not in (0.0, 1.0):
            raise ValueError("hinge loss needs a hard target (0 or 1)")
        return F.relu(1.0 - logits).mean() if t == 1.0 else F.relu(1.0 + logits).mean()
    raise ValueError(f"unknown adversarial loss {mode!r}; expected 'bce', 'lsgan' or 'hinge'")


def discriminator_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, mode: AdversarialMode = "bce"
) -> torch.Tensor:
    """D's objective: real → 1, fake → 0, the two halves averaged."""
    return 0.5 * (adversarial_loss(real_logits, 1.0, mode) + adversarial_loss(fake_logits, 0.0, mode))


def generator_loss(fake_logits: torch.Tensor, mode: AdversarialMode = "bce") -> torch.Tensor:
    """G's objective: make D call its output real (non-saturating for 'bce'; −mean logit for 'hinge')."""
    if mode == "hinge":
        return -fake_logits.mean()
    return adversarial_loss(fake_logits, 1.0, mode)


# --------------------------------------------------------------------------------------------
# alternating updates
# --------------------------------------------------------------------------------------------
def alternating_role(step: int, d_steps: int = 1, g_steps: int = 1) -> Role:
    """Which network the update at `step` trains: cycles of `d_steps` D updates then `g_steps` G updates."""
    if d_steps < 1 or g_steps < 1:
        raise ValueError(f"d_steps and g_steps must be >= 1, got {d_steps} and {g_steps}")
    return "D" if step % (d_steps + g_steps) < d_steps else "G"


def gan_update(lightning_module, optimizer, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One manual-optimisation update of the parameters `optimizer` owns; returns the (detached) loss.

    The loss is computed *inside* Lightning's `toggled_optimizer`, which switches gradients off for
    every parameter the optimiser does not own (the other network, frozen copies, a backbone), so
    the graph never reaches them and the other network accumulates no gradient from this update.
    """
    with lightning_module.toggled_optimizer(optimizer):
        loss = compute_loss()
        optimizer.zero_grad(set_to_none=True)
        lightning_module.manual_backward(loss)
        optimizer.step()
    return loss.detach()


def gan_update_parts(lightning_module, optimizer, compute_parts: Callable[[], dict[str, torch.Tensor]],
                     total: str) -> dict[str, torch.Tensor]:
    """`gan_update` for a loss made of logged parts: `compute_parts()` returns named loss terms, the
    optimiser steps on `parts[total]`, and every part comes back detached (for logging).

    The parts are computed inside `gan_update` (so inside the toggled optimiser), which is why a
    closure is needed at all; this is the one place that holds them.
    """
    parts: dict[str, torch.Tensor] = {}

    def loss() -> torch.Tensor:
        parts.update(compute_parts())
        return parts[total]

    gan_update(lightning_module, optimizer, loss)
    return {name: value.detach() for name, value in parts.items()}


def set_requires_grad(modules: nn.Module | Iterable[nn.Module], flag: bool) -> None:
    """Switch gradients on/off for every parameter of `modules`."""
    for module in [modules] if isinstance(modules, nn.Module) else modules:
        for p in module.parameters():
            p.requires_grad_(flag)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off: a snapshot that later training cannot change."""
    snapshot = copy.deepcopy(module).eval()
    set_requires_grad(snapshot, False)
    return snapshot
