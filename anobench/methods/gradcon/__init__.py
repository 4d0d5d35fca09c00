"""GradCon (Kwon et al., ECCV 2020); importing this package registers the method "gradcon"."""

from anobench.methods.gradcon.module import GradCon
from anobench.methods.gradcon.torch_model import GradConModel, gradient_cosine

__all__ = ["GradCon", "GradConModel", "gradient_cosine"]
