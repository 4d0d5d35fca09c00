"""Building blocks shared by several methods (one definition each, no copies between methods)."""

from anobench.methods.components.autoencoder import ConvDecoder, ConvEncoder, activation
from anobench.methods.components.scoring import reconstruction_error_map

__all__ = ["ConvDecoder", "ConvEncoder", "activation", "reconstruction_error_map"]
