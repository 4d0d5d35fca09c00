"""MemAE (Gong et al., ICCV 2019); importing this package registers the method "memae"."""

from anobench.methods.memae.module import MemAE
from anobench.methods.memae.torch_model import MemAEModel, MemoryModule, addressing_entropy, dead_fraction, hard_shrink_relu

__all__ = ["MemAE", "MemAEModel", "MemoryModule", "addressing_entropy", "dead_fraction", "hard_shrink_relu"]
