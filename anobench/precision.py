"""Float32 precision settings: what result.json records, and the strict float32 section Patch SVDD infers in.

On Ampere and later GPUs cuDNN convolutions run float32 as TF32 by default (10 mantissa bits), and
``torch.set_float32_matmul_precision('high')`` makes float32 matmuls TF32 too (oneDNN on CPU likewise,
'medium' even bf16). A metric can move with these process-wide switches, so every run records them;
Patch SVDD's nearest-neighbour distances are ~1e-3 of the embedding norm, so its inference turns
TF32 off (`strict_float32`).

torch >= 2.9 keeps one ``fp32_precision`` per backend and refuses to read the legacy switches once the
two APIs were mixed, so the per-backend settings are used where they exist and the legacy ones otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

# the backends whose float32 math TF32 (or bf16) can replace: GPU matmul, cuDNN convolution, oneDNN (CPU)
_BACKENDS = ("cuda.matmul", "cudnn.conv", "mkldnn.matmul", "mkldnn.conv")


def _backend(path: str) -> Any:
    obj: Any = torch.backends
    for name in path.split("."):
        obj = getattr(obj, name, None)
    return obj


def _per_backend() -> dict[str, str]:
    """``fp32_precision`` of each backend that has one (empty before torch 2.9)."""
    values = {path: getattr(_backend(path), "fp32_precision", None) for path in _BACKENDS}
    return {path: value for path, value in values.items() if value is not None}


def _legacy(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except RuntimeError:  # torch >= 2.9 after mixed legacy / per-backend settings
        return "mixed"


def float32_settings() -> dict[str, Any]:
    """The process's float32 precision switches (result.json ``float32_precision``)."""
    info: dict[str, Any] = {
        "matmul_precision": _legacy(torch.get_float32_matmul_precision),  # highest = no TF32/bf16 in float32 matmuls
        "cuda_matmul_allow_tf32": _legacy(lambda: bool(torch.backends.cuda.matmul.allow_tf32)),
        "cudnn_allow_tf32": _legacy(lambda: bool(torch.backends.cudnn.allow_tf32)),
    }
    backends = _per_backend()
    if backends:
        info["fp32_precision"] = backends  # "none": follows the switches above; "ieee": full float32
    return info


@contextlib.contextmanager
def strict_float32() -> Iterator[None]:
    """Float32 matmuls and convolutions in full float32 (no TF32/bf16) inside; every switch restored after."""
    backends = _per_backend()
    if backends:
        try:
            for path in backends:
                _backend(path).fp32_precision = "ieee"
            yield
        finally:
            for path, value in backends.items():
                _backend(path).fp32_precision = value
        return
    precision = torch.get_float32_matmul_precision()
    matmul_tf32, cudnn_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
