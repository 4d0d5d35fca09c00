"""OGNet, "Old is Gold" (Zaheer et al., CVPR 2020); importing this package registers the method "ognet"."""

from anobench.methods.ognet.module import OGNet, OGNetSchedule, resolve_schedule
from anobench.methods.ognet.torch_model import Generator, OGNetModel

__all__ = ["Generator", "OGNet", "OGNetModel", "OGNetSchedule", "resolve_schedule"]
