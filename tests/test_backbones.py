"""Pretrained weights resolve offline from a file or the torch cache, or fail naming the file expected."""

from __future__ import annotations

import pytest
import torch

from anobench.backbones import build_backbone, expected_weights_file
from anobench.errors import ConfigError, WeightsNotFoundError


def test_missing_weights_error_names_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = expected_weights_file("resnet18")
    assert str(expected).startswith(str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone("resnet18", pretrained=True, allow_download=False)
    assert str(expected) in str(info.value) and "pretrained=false" in str(info.value)


def test_weights_path_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        build_backbone("resnet18", pretrained=True, weights_path=missing, allow_download=False)


def test_weights_load_from_torch_cache_and_from_explicit_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = build_backbone("resnet18", pretrained=False)
    with torch.no_grad():
        reference.fc.weight.fill_(0.25)
    cached = expected_weights_file("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    loaded = build_backbone("resnet18", pretrained=True, allow_download=False)
    assert torch.equal(loaded.fc.weight, reference.fc.weight)
    explicit = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), explicit)
    assert torch.equal(build_backbone("resnet18", weights_path=explicit, allow_download=False).fc.weight,
                       reference.fc.weight)


def test_corrupt_weights_file_is_named(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="bad.pth"):
        build_backbone("resnet18", weights_path=bad, allow_download=False)


def test_unknown_architecture_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet1800"):
        build_backbone("resnet1800", pretrained=False)
