"""Patch SVDD (Yi & Yoon, ACCV 2020); importing this package registers the method "patch_svdd"."""

from anobench.methods.patch_svdd.module import PatchSVDD
from anobench.methods.patch_svdd.torch_model import (
    EncoderHier,
    EncoderSmall,
    PatchSVDDModel,
    PositionClassifier,
)

__all__ = ["EncoderHier", "EncoderSmall", "PatchSVDD", "PatchSVDDModel", "PositionClassifier"]
