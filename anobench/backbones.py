"""torchvision backbones with pretrained weights resolved offline-first.

Order: an explicit `weights_path`, then the torch hub cache ($TORCH_HOME/hub/checkpoints/<file>, where
torchvision itself would put it), then a download where a network exists (allow_download). With none of
these the error names the exact file expected and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from anobench.errors import ConfigError, WeightsNotFoundError


def _weights_enum(arch: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError):
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
        raise ConfigError(f"backbone.arch={arch!r} is not a torchvision classification model; known: {known}") from None


def expected_weights_file(arch: str) -> Path:
    """Where torchvision's ImageNet weights for `arch` are looked up in the torch hub cache."""
    url = _weights_enum(arch).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def resolve_weights(arch: str, weights_path: str | Path | None = None, allow_download: bool = True) -> Path:
    """Path of a local file holding `arch`'s ImageNet state dict (downloading it only if allowed)."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"backbone.weights_path={path}: no such file (expected the torchvision "
                                       f"ImageNet state dict for {arch}, e.g. {expected_weights_file(arch).name})")
        return path
    cached = expected_weights_file(arch)
    if cached.is_file():
        return cached
    if allow_download and not os.environ.get("ANOBENCH_OFFLINE"):
        try:
            torch.hub.load_state_dict_from_url(_weights_enum(arch).url, progress=True, check_hash=True)
            return cached
        except Exception as error:  # offline: fall through to the explanation below
            reason = f" (download failed: {error})"
    else:
        reason = ""
    raise WeightsNotFoundError(
        f"pretrained weights for backbone {arch!r} not found{reason}. Put the torchvision ImageNet file at "
        f"{cached} (the torch hub cache; TORCH_HOME moves it), or set backbone.weights_path=/path/to/"
        f"{cached.name}, or use backbone.pretrained=false.")


def build_backbone(arch: str, pretrained: bool = True, weights_path: str | Path | None = None,
                   allow_download: bool = True) -> nn.Module:
    """A torchvision model `arch`, with ImageNet weights when `pretrained` (see resolve_weights)."""
    import torchvision

    _weights_enum(arch)  # validates the name with a clear error
    model = torchvision.models.get_model(arch, weights=None)
    if pretrained:
        path = resolve_weights(arch, weights_path, allow_download)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as error:
            raise WeightsNotFoundError(f"{path}: not a usable {arch} state dict ({error})") from error
    return model
