"""Uninformed Students (Bergmann et al., CVPR 2020); importing this package registers "uninformed_students"."""

from anobench.methods.uninformed_students.module import UninformedStudents
from anobench.methods.uninformed_students.teacher import BackboneSpec, TeacherConfig, prepare_teachers
from anobench.methods.uninformed_students.torch_model import (
    PatchNet,
    StudentTeacherModel,
    ensemble_dense,
    pad_images,
    predictive_variance,
    regression_error,
)

__all__ = [
    "BackboneSpec",
    "PatchNet",
    "StudentTeacherModel",
    "TeacherConfig",
    "UninformedStudents",
    "ensemble_dense",
    "predictive_variance",
    "pad_images",
    "prepare_teachers",
    "regression_error",
]
