"""Neural Batch Sampling (Chu & Kitani, ECCV 2020): anomaly segmentation in loss-profile space."""

from anobench.methods.nbs.labelled import LabelledSet, build_labelled_set, select_from_test_split
from anobench.methods.nbs.module import NeuralBatchSampling
from anobench.methods.nbs.torch_model import (
    LossProfileBuffer,
    NBSModel,
    PatchAutoencoder,
    ProfilePredictor,
    SamplerPolicy,
)

__all__ = [
    "LabelledSet",
    "LossProfileBuffer",
    "NBSModel",
    "NeuralBatchSampling",
    "PatchAutoencoder",
    "ProfilePredictor",
    "SamplerPolicy",
    "build_labelled_set",
    "select_from_test_split",
]
