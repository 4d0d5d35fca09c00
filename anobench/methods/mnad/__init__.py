"""MNAD, reconstruction variant (Park et al., CVPR 2020); importing this package registers "mnad"."""

from anobench.methods.mnad.module import MNAD, min_max
from anobench.methods.mnad.torch_model import MNADModel, feature_losses, point_score, psnr, updated_memory

__all__ = ["MNAD", "MNADModel", "feature_losses", "min_max", "point_score", "psnr", "updated_memory"]
