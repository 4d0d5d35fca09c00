"""Building blocks shared by several methods (one definition each, no copies between methods)."""

from anobench.methods.components.autoencoder import ConvDecoder, ConvEncoder, activation
from anobench.methods.components.gan import (  # GAN plumbing shared by OGNet and SynthCP
    Discriminator,
    adversarial_loss,
    alternating_role,
    build_discriminator,
    discriminator_loss,
    frozen_copy,
    gan_update,
    gan_update_parts,
    generator_loss,
    set_requires_grad,
)
from anobench.methods.components.scoring import reconstruction_error_map

__all__ = [
    "ConvDecoder", "ConvEncoder", "Discriminator", "activation", "adversarial_loss", "alternating_role",
    "build_discriminator", "discriminator_loss", "frozen_copy", "gan_update", "gan_update_parts", "generator_loss",
    "reconstruction_error_map", "set_requires_grad",
]
