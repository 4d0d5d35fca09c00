"""SynthCP, "Synthesize then Compare" (Xia et al., ECCV 2020), adapted to MVTec AD; registers "synthcp"."""

from anobench.methods.synthcp.module import SynthCP
from anobench.methods.synthcp.torch_model import LayoutGenerator, SynthCPModel, kmeans

__all__ = ["LayoutGenerator", "SynthCP", "SynthCPModel", "kmeans"]
