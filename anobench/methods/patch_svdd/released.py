"""The Patch SVDD authors' released encoders, loaded into our hierarchical encoder.

The authors publish one trained encoder per MVTec AD category in their repository
(github.com/nuclearboy95/Anomaly-Detection-PatchSVDD-PyTorch, ``ckpts/<category>/enchier.pkl``): a
``torch.save(state_dict)`` of their ``EncoderHier(K=64, D=64)``. Its keys are

    enc.conv1 ... enc.conv8   (weight, bias)   their EncoderDeep: the K = 32 encoder
    conv1, conv2              (weight, bias)   the hierarchical head (Conv 2×2, Conv 1×1)

Ours is the same network layer for layer (torch_model.py): the eight convs of `EncoderSmall` are a
ModuleList, so ``enc.conv<i>`` is our ``enc.convs.<i-1>``; the head keys are the same. `released_key_map`
is the whole mapping; `released_encoder_state` checks a file against it (every key, every shape) and
`load_released_encoder` loads it. `anobench eval method=patch_svdd data=mvtec/<category>
weights.released=<enchier.pkl>` evaluates with it (README "Released weights").

The authors evaluate (codes/inspection.py, eval_encoder_NN_multiK) at 256×256 with K = 64 patches at stride 16
and K = 32 patches at stride 4, 1-NN to every training patch (KD-tree for K = 64, approximate NGT for K = 32),
and score with the product of the two maps: our method card's defaults (`PAPER_EVALUATION`), with exact 1-NN
for both. `paper_evaluation_deviations` names what a config changes from them.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from anobench.errors import ConfigError
from anobench.methods.patch_svdd.torch_model import EncoderHier

WEIGHTS_KEY = "weights.released"  # the eval config key naming the file (conf/eval_released.yaml)
RELEASED_SOURCE = ("Yi & Yoon's released EncoderHier(K=64, D=64): github.com/nuclearboy95/"
                   "Anomaly-Detection-PatchSVDD-PyTorch, ckpts/<category>/enchier.pkl")
N_CONVS = 8  # convs of the authors' EncoderDeep (our EncoderSmall)

# What the authors' evaluation uses (codes/inspection.py): method-config key -> value. The strides and the
# product of the maps are fixed in PatchSVDDModel (16, 4, M64 ⊙ M32); exact search stands for their 1-NN.
PAPER_EVALUATION: dict[str, Any] = {
    "input.image_size": 256,
    "input.interpolation": "nearest",
    "module.embedding_dim": 64,
    "module.bank_subsample": None,
    "module.nn_search": ("exact", "torch"),
}


def released_key_map() -> dict[str, str]:
    """The authors' EncoderHier key -> our EncoderHier key (same parameter, same shape)."""
    mapping = {}
    for i in range(1, N_CONVS + 1):
        for part in ("weight", "bias"):
            mapping[f"enc.conv{i}.{part}"] = f"enc.convs.{i - 1}.{part}"
    for head in ("conv1", "conv2"):
        for part in ("weight", "bias"):
            mapping[f"{head}.{part}"] = f"{head}.{part}"
    return mapping


def _shape(value: Any) -> str:
    return "×".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def released_encoder_state(state: Any, encoder: EncoderHier, source: str = "the released weights"
                           ) -> dict[str, torch.Tensor]:
    """`state` (a loaded state dict with the authors' keys) as a state dict of our `encoder`.

    Every problem is reported at once in one ConfigError naming `source`: not a state dict, missing keys,
    unexpected keys, shape mismatches (e.g. a file of another embedding size D)."""
    expected = released_key_map()
    if isinstance(state, Mapping) and "state_dict" in state and not any(k in state for k in expected):
        raise ConfigError(f"{WEIGHTS_KEY}={source}: this is a training checkpoint (it holds 'state_dict'), not the "
                          "authors' released encoder; an anobench run's checkpoint is evaluated with "
                          "`anobench eval checkpoint=<run dir>/checkpoints/last.ckpt`")
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ConfigError(f"{WEIGHTS_KEY}={source}: expected a torch.save(state_dict) of the authors' "
                          f"EncoderHier(K=64, D=64) (keys enc.conv1.weight … enc.conv8.bias, conv1.*, conv2.*), "
                          f"got a {type(state).__name__}")
    ours = encoder.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file {_shape(state[k])}, expected {_shape(ours[expected[k]])}"
                  for k in expected if k in state
                  and (not isinstance(state[k], torch.Tensor) or state[k].shape != ours[expected[k]].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise ConfigError(f"{WEIGHTS_KEY}={source}: not the authors' EncoderHier(K=64, D={encoder.D}) state dict "
                          f"({len(state)} keys, {len(expected)} expected) — " + " | ".join(problems))
    return {expected[k]: state[k].detach().to(ours[expected[k]].dtype) for k in expected}


def read_released_file(path: str | Path) -> Any:
    """The object saved in `path` (tensors only: weights_only=True, on the CPU); a clear error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{WEIGHTS_KEY}={path}: no such file (expected the authors' ckpts/<category>/enchier.pkl)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{WEIGHTS_KEY}={path}: not a torch.save file of tensors (expected the authors' "
                          f"state dict of EncoderHier(K=64, D=64)): {first}") from None


def load_released_encoder(encoder: EncoderHier, path: str | Path) -> None:
    """Load the authors' released `EncoderHier` state dict in `path` into `encoder` (all keys, strictly)."""
    encoder.load_state_dict(released_encoder_state(read_released_file(path), encoder, source=str(path)))


def paper_evaluation_deviations(method_cfg: Mapping[str, Any]) -> list[str]:
    """`key=value (paper: ...)` for every setting of a resolved method config that differs from the authors'
    evaluation (`PAPER_EVALUATION`); empty when the run evaluates as the paper does."""
    out = []
    for key, paper in PAPER_EVALUATION.items():
        node: Any = method_cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        allowed = paper if isinstance(paper, tuple) else (paper,)
        if node not in allowed:
            out.append(f"method.{key}={node} (paper: {' or '.join(map(str, allowed))})")
    return out
