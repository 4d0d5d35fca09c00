"""Uninformed Students: dense = per-patch descriptors, ensemble scoring, held-out standardisation,
teacher cache, missing weights offline, configs, leaderboard paper column, learning on synthetic data."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anobench.errors import ConfigError, WeightsNotFoundError
from anobench.methods import get_method
from anobench.methods.uninformed_students import (
    BackboneSpec,
    PatchNet,
    StudentTeacherModel,
    TeacherConfig,
    UninformedStudents,
    ensemble_dense,
    predictive_variance,
    prepare_teachers,
    pad_images,
    regression_error,
)
from anobench.methods.uninformed_students.module import held_out_indices
from anobench.methods.uninformed_students.teacher import compactness_loss, teacher_key, triplet_loss
from anobench.metrics.pooling import MAP_POOLING, pool_maps
from fitting import SMALL_SYNTHETIC, fit_and_test, quiet_trainer, synthetic_datamodule

SMALL = dict(descriptor_dim=16, width=0.125)


def _loader(images: torch.Tensor, batch_size: int = 3):
    """A loader shaped like the datamodule's inference_train_dataloader (image + index)."""
    data = [{"image": image, "index": i} for i, image in enumerate(images)]
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)


# --- dense extraction ---------------------------------------------------------------------------------
@pytest.mark.parametrize("patch_size", [17, 33, 65])
def test_dense_descriptors_equal_per_patch_network(patch_size):
    """One dense pass (multi-pool phase stacking) = the patch network on the p×p patch centred on each pixel."""
    torch.manual_seed(0)
    net = PatchNet(patch_size, **SMALL).eval()
    images = torch.randn(2, 3, 37, 30)
    half = (patch_size - 1) // 2
    padded = pad_images(images, half)
    with torch.no_grad():
        dense = net.dense(images)
        assert dense.shape == (2, 16, 37, 30)
        assert dense.abs().mean() > 1e-3  # non-trivial descriptors
        positions = [(0, 0), (36, 29), (5, 17), (20, 2), (13, 28), (31, 11)]
        for i, j in positions:
            reference = net(padded[:, :, i:i + patch_size, j:j + patch_size])
            torch.testing.assert_close(dense[:, :, i, j], reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("patch_size", [17, 33, 65])
@pytest.mark.parametrize("padding", [True, False])
def test_fused_students_equal_one_call_per_student_in_values_and_gradients(patch_size, padding):
    """ensemble_dense (one grouped-convolution pass) = stacking each student's dense(), and each student's
    parameters get the gradient its own call would give."""
    torch.manual_seed(0)
    students = torch.nn.ModuleList(PatchNet(patch_size, **SMALL) for _ in range(3))
    images = torch.randn(2, 3, 70, 68)
    fused = ensemble_dense(students, images, padding=padding)
    looped = torch.stack([s.dense(images, padding=padding) for s in students])
    assert fused.shape == looped.shape == (3, 2, 16, *looped.shape[-2:])
    torch.testing.assert_close(fused, looped, atol=1e-5, rtol=1e-4)
    weights = torch.randn_like(looped)
    fused_grads = torch.autograd.grad((fused * weights).sum(), list(students.parameters()))
    looped_grads = torch.autograd.grad((looped * weights).sum(), list(students.parameters()))
    for a, b in zip(fused_grads, looped_grads):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # sums over many pixels: float order differs by CPU
    single = ensemble_dense(students[:1], images, padding=padding)
    torch.testing.assert_close(single, looped[:1])


def test_training_crop_sees_the_same_descriptors_as_the_whole_image():
    """train_crop: dense(padding=False) on a crop with its p−1 context = the whole-image map there."""
    torch.manual_seed(0)
    module = UninformedStudents(patch_sizes=[33], n_students=1, train_crop=8, **SMALL)
    net = module.model.teachers["33"]
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        full = net.dense(x)
        torch.manual_seed(3)
        view, padding, window = module._training_view(x, 33)
        torch.manual_seed(3)
        top, left = (int(v) for v in torch.randint(0, 24 - 8 + 1, (2,)))
        assert view.shape[-2:] == (8 + 32, 8 + 32) and padding is False and window == (top, left, 8)
        torch.testing.assert_close(net.dense(view, padding=False), full[..., top:top + 8, left:left + 8],
                                   atol=1e-5, rtol=1e-4)
    module.train_crop = 24  # a crop as large as the image: the whole image, padded as at test time
    view, padding, window = module._training_view(x, 33)
    assert padding is True and view is x and window is None


@pytest.mark.parametrize("train_crop", [8, None])
def test_cached_teacher_targets_give_the_same_loss_as_running_the_teacher(train_crop):
    """Without augmentation the frozen teacher's normalised descriptors are kept from the statistics pass;
    a step that reads them (crop or whole image) has the loss of a step that runs the teacher."""
    torch.manual_seed(0)
    module = UninformedStudents(patch_sizes=[17], n_students=2, train_crop=train_crop, **SMALL)
    images = torch.rand(3, 3, 24, 24)
    batches = [{"image": images[:2], "index": torch.tensor([0, 1])}, {"image": images[2:], "index": torch.tensor([2])}]
    module.fit_teacher_statistics(batches, exclude={1}, keep_outputs=True)
    assert sorted(module._teacher_targets[17]) == [0, 2]  # held-out images are not training targets
    batch, indices = images[[2, 0]], [2, 0]
    torch.manual_seed(5)
    cached = module.compute_losses(batch, indices)["loss"]
    torch.manual_seed(5)
    computed = module.compute_losses(batch)["loss"]
    torch.testing.assert_close(cached, computed, atol=1e-5, rtol=1e-5)
    for target in module._teacher_targets[17].values():  # the cache is what the cached step read
        target.zero_()
    torch.manual_seed(5)
    assert not torch.allclose(module.compute_losses(batch, indices)["loss"], computed, rtol=1e-2)


def test_teacher_outputs_are_not_cached_with_augmentation_or_over_the_memory_cap(capsys):
    module = UninformedStudents(patch_sizes=[17], n_students=1, teacher_output_cache_mb=1, **SMALL)
    assert module._can_cache_teacher_outputs(augmented=False, image_size=24, n_images=10)  # 10 × d × 24² floats < 1 MB
    assert not module._can_cache_teacher_outputs(augmented=True, image_size=24, n_images=10)
    assert not module._can_cache_teacher_outputs(augmented=False, image_size=24, n_images=1000)
    assert "teacher_output_cache_mb=1" in capsys.readouterr().out
    with pytest.raises(ValueError, match="teacher_output_cache_mb"):
        UninformedStudents(patch_sizes=[17], teacher_output_cache_mb=-1, **SMALL)


def test_patch_net_layers_follow_the_paper_tables():
    net = PatchNet(65)
    convs = [m for m in net.layers if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(128, 5), (128, 5), (128, 5), (256, 4), (128, 1)]
    assert net.n_pools == 3 and net(torch.zeros(1, 3, 65, 65)).shape == (1, 128)
    assert PatchNet(17)(torch.zeros(2, 3, 17, 17)).shape == (2, 128)
    assert PatchNet(33, width=0.5).layers[0].out_channels == 64
    with pytest.raises(ValueError, match="65×65"):
        PatchNet(65)(torch.zeros(1, 3, 64, 64))


# --- ensemble scoring ------------------------------------------------------------------------------------
def test_variance_is_zero_when_students_agree_and_error_is_mean_regression():
    torch.manual_seed(0)
    model = StudentTeacherModel([17], n_students=3, **SMALL).eval()
    images = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        _, variance = model.error_and_variance(images)[17]
        assert variance.min() > 1e-4  # independently initialised students disagree
        first = model.students["17"][0].state_dict()
        for student in model.students["17"]:
            student.load_state_dict(first)
        error, variance = model.error_and_variance(images)[17]
        assert variance.abs().max() < 1e-10
        outputs = torch.randn(3, 2, 16, 5, 5)
        target = torch.randn(2, 16, 5, 5)
        torch.testing.assert_close(regression_error(outputs, target), ((outputs.mean(0) - target) ** 2).sum(1))
        manual = (outputs.pow(2).sum(2)).mean(0) - outputs.mean(0).pow(2).sum(1)  # mean‖μ_i‖² − ‖μ̄‖²
        torch.testing.assert_close(predictive_variance(outputs), manual, atol=1e-5, rtol=1e-5)


def test_multiscale_map_is_mean_of_standardised_single_scale_maps():
    torch.manual_seed(0)
    model = StudentTeacherModel([17, 33], n_students=2, **SMALL).eval()
    model.error_stats.copy_(torch.tensor([[2.0, 3.0], [0.5, 0.25]]))
    model.variance_stats.copy_(torch.tensor([[1.0, 2.0], [0.1, 4.0]]))
    images = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        raw = model.error_and_variance(images)
        maps = model.score_maps(images)
        e, v = raw[33]
        torch.testing.assert_close(maps[33], (e - 0.5) / 0.25 + (v - 0.1) / 4.0)
        out = model(images)
    torch.testing.assert_close(out.anomaly_map, (maps[17] + maps[33]) / 2)
    torch.testing.assert_close(out.pred_score, pool_maps(out.anomaly_map, MAP_POOLING))  # no paper score: the one rule


def test_standardisation_statistics_come_from_held_out_normal_images_only():
    torch.manual_seed(0)
    module = UninformedStudents(patch_sizes=[17], n_students=2, val_fraction=0.25, **SMALL)
    images = torch.rand(8, 3, 20, 20)
    held_out = held_out_indices(8, 0.25, seed=0)
    assert len(held_out) == 2 and held_out == held_out_indices(8, 0.25, seed=0)
    module.eval()
    module.prepare_inference(_loader(images))
    with torch.no_grad():
        e, v = module.model.error_and_variance(images[held_out])[17]
    torch.testing.assert_close(module.model.error_stats[0], torch.stack([e.mean(), e.std(unbiased=False)]))
    torch.testing.assert_close(module.model.variance_stats[0], torch.stack([v.mean(), v.std(unbiased=False)]))
    # the other (student-training) images do not enter the statistics; a held-out one does
    before = module.model.error_stats.clone()
    changed = images.clone()
    changed[[i for i in range(8) if i not in held_out]] = torch.rand(6, 3, 20, 20)
    module.prepare_inference(_loader(changed))
    torch.testing.assert_close(module.model.error_stats, before)
    changed[held_out[0]] = torch.rand(3, 20, 20)
    module.prepare_inference(_loader(changed))
    assert not torch.allclose(module.model.error_stats, before)


class _TrainingSteps(L.Callback):
    """Records the training-set indices of every training batch and the loss its step returned."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.losses: list[torch.Tensor | None] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.indices.extend(batch["index"].tolist())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs.get("loss") if isinstance(outputs, dict) else outputs)


def test_held_out_images_never_reach_the_students_and_no_step_is_empty(tmp_path):
    """Held-out validation images are excluded from the training set by index up front: every training
    batch is non-empty (a step returning None hangs DDP) and holds none of them (val_fraction 0.4 of 5
    images = 2 held out; batch size 1 would have given held-out-only batches before)."""
    module = UninformedStudents(patch_sizes=[17], n_students=1, **SMALL, val_fraction=0.4)
    steps = _TrainingSteps()
    dm = _tiny_datamodule(tmp_path)
    dm.train_batch_size = 1
    quiet_trainer(12, [steps]).fit(module, datamodule=dm)
    seen, losses = steps.indices, steps.losses
    held_out = set(held_out_indices(5, 0.4, 0))
    assert len(held_out) == 2 and len(seen) == 12
    assert not held_out & set(seen) and set(seen) == set(range(5)) - held_out
    assert all(loss is not None and torch.isfinite(loss) for loss in losses)


# --- teacher: losses, cache, weights ------------------------------------------------------------------------
def test_compactness_and_triplet_losses():
    decorrelated = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert compactness_loss(decorrelated).item() == pytest.approx(0.0, abs=1e-7)
    correlated = torch.tensor([[1.0, 2.0], [2.0, 4.1], [3.0, 6.0], [4.0, 8.2]])
    assert compactness_loss(correlated).item() == pytest.approx(1.0, abs=1e-3)  # corr ≈ 1, one off-diagonal pair
    a = torch.zeros(3, 4)
    assert triplet_loss(a, a, a + 10, margin=1.0).item() == 0.0  # negatives far away
    assert triplet_loss(a, a + 1, a, margin=1.0).item() == pytest.approx(5.0)  # 1 + 4 − min(0, 4)


def test_distillation_regresses_the_backbone_features_through_l_k():
    """L_k: the decoded teacher descriptor regresses the backbone's feature vector of the same patch.

    A small fixed backbone (random conv + pooling, its .fc dropped by DistillationTarget) gives 8-d
    targets; 150 steps must bring L_k well below the loss of the best constant prediction (the targets'
    spread). Without L_k in the loss the decoder never trains and cannot beat a constant.
    """
    from anobench.methods.uninformed_students.teacher import DistillationTarget, PatchSource, distill_teacher
    from anobench.methods.uninformed_students.torch_model import normalize_images

    class TinyBackbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, padding=2)
            self.fc = torch.nn.Linear(8, 4)  # replaced by Identity, as a ResNet's

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 1).flatten(1))

    torch.manual_seed(0)
    target = DistillationTarget(TinyBackbone(), input_size=None)
    gen = torch.Generator().manual_seed(0)
    # low-frequency colour fields: patches differ from each other, so the targets spread
    images = [F.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=(64, 64), mode="bilinear")[0] for _ in range(8)]

    def l_k(steps: int) -> float:
        torch.manual_seed(1)
        net = PatchNet(17, **SMALL)
        source = PatchSource(images, torch.Generator().manual_seed(2))
        config = TeacherConfig(steps=steps, batch_size=32, lr=2e-3, lambda_c=0.1)
        return distill_teacher(net, target, source, config, torch.device("cpu"))["loss_k"]

    with torch.no_grad():  # the loss of the best constant prediction: the targets' spread around their mean
        features = target(normalize_images(PatchSource(images, torch.Generator().manual_seed(3)).sample(512, 17)["anchor"]))
        spread = (features - features.mean(dim=0)).pow(2).sum(dim=1).mean().item()
    trained = l_k(150)
    assert trained < 0.3 * spread, (trained, spread)


def _image_folder(folder, n=3, size=48):
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(size, size + 8, 3, generator=gen) * 255).to(torch.uint8).numpy()
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"class{i % 2}" / f"img{i}.png")
    return folder


def test_image_folder_is_loaded_resized_as_8bit_with_a_seeded_subset(tmp_path):
    from anobench.methods.uninformed_students.teacher import PatchSource, load_image_folder

    folder = _image_folder(tmp_path / "natural", n=5, size=48)
    images = load_image_folder(folder, size=40)
    assert len(images) == 5 and all(im.dtype == torch.uint8 and min(im.shape[1:]) == 40 for im in images)
    subset = load_image_folder(folder, size=40, max_images=2, seed=1)
    assert len(subset) == 2
    assert all(torch.equal(a, b) for a, b in zip(subset, load_image_folder(folder, size=40, max_images=2, seed=1)))
    patches = PatchSource(images, torch.Generator().manual_seed(0)).sample(6, 17, with_triplets=True)
    assert {k: tuple(v.shape) for k, v in patches.items()} == {k: (6, 3, 17, 17) for k in ("anchor", "positive", "negative")}
    assert patches["anchor"].dtype == torch.float32 and 0 <= patches["anchor"].min() and patches["anchor"].max() <= 1
    with pytest.raises(ConfigError, match="image_folder"):
        load_image_folder(tmp_path / "missing", size=40)


def test_teacher_is_distilled_once_cached_and_reused_for_another_category(tmp_path):
    folder = _image_folder(tmp_path / "natural")
    config = TeacherConfig(distill_data="imagefolder", image_folder=str(folder), image_folder_size=40, steps=3,
                           batch_size=4, cache_dir=str(tmp_path / "teachers"))
    backbone = BackboneSpec(name="resnet18", arch="resnet18", pretrained=False)
    built = []

    def build_backbone(arch, pretrained, weights_path):
        from anobench.backbones import build_backbone as real

        built.append(arch)
        return real(arch, pretrained=pretrained, weights_path=weights_path)

    def fresh():
        torch.manual_seed(5)
        return {17: PatchNet(17, **SMALL)}

    first = fresh()
    initial = {k: v.clone() for k, v in first[17].state_dict().items()}
    report = prepare_teachers(first, 16, 0.125, backbone, config, lambda: [], "synthetic:washer",
                              torch.device("cpu"), build_backbone)
    assert report[17]["source"] == "distilled" and built == ["resnet18"]
    assert any(not torch.equal(initial[k], v) for k, v in first[17].state_dict().items())  # it trained
    files = sorted((tmp_path / "teachers").glob("us_teacher_p17_*.pt"))
    assert len(files) == 1 and report[17]["path"] == str(files[0])
    assert not list((tmp_path / "teachers").glob("*.tmp"))  # atomic write left no temporary file

    second = fresh()  # another category, same teacher settings: loaded, nothing trained or built
    report = prepare_teachers(second, 16, 0.125, backbone, config, lambda: [], "synthetic:tablet",
                              torch.device("cpu"), build_backbone)
    assert report[17]["source"] == "cache" and built == ["resnet18"]
    for k, v in first[17].state_dict().items():
        assert torch.equal(second[17].state_dict()[k], v)

    changed = TeacherConfig(**{**config.__dict__, "steps": 4})
    report = prepare_teachers(fresh(), 16, 0.125, backbone, changed, lambda: [], "synthetic:washer",
                              torch.device("cpu"), build_backbone)
    assert report[17]["source"] == "distilled"
    assert len(list((tmp_path / "teachers").glob("us_teacher_p17_*.pt"))) == 2


def test_teacher_key_covers_config_and_category_data():
    backbone = BackboneSpec(name="resnet18", arch="resnet18", pretrained=True)
    config = TeacherConfig()
    key, description = teacher_key(65, 128, 1.0, backbone, config, "mvtec:bottle")
    assert key == teacher_key(65, 128, 1.0, backbone, TeacherConfig(), "mvtec:bottle")[0]
    assert description["backbone"] == {"arch": "resnet18", "pretrained": True, "weights": "torchvision-default"}
    others = [
        teacher_key(33, 128, 1.0, backbone, config, "mvtec:bottle")[0],
        teacher_key(65, 128, 0.5, backbone, config, "mvtec:bottle")[0],
        teacher_key(65, 128, 1.0, BackboneSpec(arch="resnet18", pretrained=False), config, "mvtec:bottle")[0],
        teacher_key(65, 128, 1.0, backbone, TeacherConfig(lambda_c=0.0), "mvtec:bottle")[0],
        teacher_key(65, 128, 1.0, backbone, config, "mvtec:cable")[0],  # category data: one teacher per category
    ]
    assert len({key, *others}) == 6
    assert key == teacher_key(65, 128, 1.0, backbone, TeacherConfig(cache_dir="/elsewhere", log_every=5),
                              "mvtec:bottle")[0]
    with pytest.raises(ConfigError, match="distill_data"):
        TeacherConfig.from_dict({"distill_data": "imagenet"})
    with pytest.raises(ConfigError, match="stepz"):
        TeacherConfig.from_dict({"stepz": 3})


def _tiny_datamodule(tmp_path, category="washer", image_size=32):
    from anobench.data import AnomalyDataModule

    return AnomalyDataModule(dataset="synthetic", category=category, root=str(tmp_path / "synthetic"),
                             image_size=image_size, train_batch_size=4, eval_batch_size=4,
                             synthetic=dict(n_train=5, n_test_good=2, n_test_per_defect=1))


def test_missing_pretrained_weights_offline_stop_the_fit_naming_the_file(tmp_path, monkeypatch):
    from anobench.backbones import expected_weights_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ANOBENCH_OFFLINE", "1")
    module = UninformedStudents(patch_sizes=[17], n_students=1, **SMALL,
                                backbone={"name": "resnet18", "arch": "resnet18", "pretrained": True, "weights_path": None},
                                teacher={"cache_dir": str(tmp_path / "teachers"), "steps": 1, "batch_size": 2})
    with pytest.raises(WeightsNotFoundError) as info:
        quiet_trainer(1).fit(module, datamodule=_tiny_datamodule(tmp_path))
    message = str(info.value)
    assert str(expected_weights_file("resnet18")) in message and "weights_path" in message
    assert "pretrained=false" in message
    assert not (tmp_path / "teachers").exists() or not list((tmp_path / "teachers").glob("*.pt"))


def test_fit_with_untrained_resnet_teacher_distils_once_then_reuses(tmp_path, capsys):
    """Through Lightning: backbone resnet18 pretrained=false, distilled on the category's images, cached;
    a second fit on the same category loads the cached teacher."""
    settings = dict(patch_sizes=[17], n_students=2, **SMALL,
                    backbone={"name": "resnet18", "arch": "resnet18", "pretrained": False, "weights_path": None},
                    teacher={"cache_dir": str(tmp_path / "teachers"), "steps": 2, "batch_size": 4})
    first = UninformedStudents(**settings)
    quiet_trainer(2).fit(first, datamodule=_tiny_datamodule(tmp_path))
    assert first.teacher_report[17]["source"] == "distilled"
    assert bool(first.model.fitted[0]) and first.model.teacher_std.min() > 0
    second = UninformedStudents(**settings)
    quiet_trainer(1).fit(second, datamodule=_tiny_datamodule(tmp_path))
    assert second.teacher_report[17]["source"] == "cache"
    for k, v in first.model.teachers.state_dict().items():
        assert torch.equal(second.model.teachers.state_dict()[k], v)
    assert not any(p.requires_grad for p in second.model.teachers.parameters())


def test_random_init_teacher_is_the_same_for_every_run_and_scale_list():
    torch.manual_seed(1)
    a = UninformedStudents(patch_sizes=[17, 65], n_students=1, **SMALL)
    torch.manual_seed(2)
    b = UninformedStudents(patch_sizes=[65], n_students=1, **SMALL)
    for k, v in a.model.teachers["65"].state_dict().items():
        assert torch.equal(b.model.teachers["65"].state_dict()[k], v)
    assert not torch.equal(a.model.students["65"][0].layers[0].weight, b.model.students["65"][0].layers[0].weight)


# --- configs and leaderboard ----------------------------------------------------------------------------------
def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_configs_default_and_paper_experiment():
    assert get_method("uninformed_students") is UninformedStudents
    cfg = _compose(["method=uninformed_students"])
    # default: the ImageNet-pretrained EfficientNet-Lite0 from PyPI, so the teacher is real without a download
    assert cfg.method.module.backbone.arch == "efficientnet_lite0" and cfg.method.module.backbone.pretrained is True
    # CPU default: single scale p = 33 at 128 px (the object coverage of the paper's p = 65 at 256 px), Adam 5e-4
    assert list(cfg.method.module.patch_sizes) == [33] and cfg.method.input.image_size == 128
    assert cfg.method.module.optimizer.lr == 5e-4
    cfg = _compose(["method=uninformed_students", "backbone=resnet18", "backbone.pretrained=false"])
    assert cfg.method.module.backbone.arch == "resnet18" and cfg.method.module.backbone.pretrained is False
    assert cfg.method.module.teacher.cache_dir.endswith("teachers")
    paper = _compose(["experiment=uninformed_students_paper"])
    assert paper.method.name == "uninformed_students" and paper.budget_label == "paper"
    assert paper.method.module.backbone.arch == "resnet18" and paper.method.module.backbone.pretrained is True
    assert list(paper.method.module.patch_sizes) == [65] and paper.method.module.width == 1.0
    assert paper.method.module.optimizer.lr == 1e-4 and paper.method.module.train_crop is None  # whole images
    assert paper.method.module.n_students == 3 and paper.method.module.descriptor_dim == 128
    assert paper.method.module.teacher.steps == 50000 and paper.method.module.teacher.distill_data == "imagefolder"
    assert paper.method.input.image_size == 256 and paper.trainer.max_epochs == 100


def test_leaderboard_shows_the_paper_pro_beside_ours():
    from anobench.results.leaderboard import build_leaderboard
    from anobench.results.render import to_markdown

    record = {"method": "uninformed_students", "dataset": "mvtec", "category": "carpet", "seed": 0, "status": "ok",
              "finished_at": "2026-01-01", "budget": {"label": "paper"}, "_path": "runs/x/result.json",
              "metrics": {"image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.7}}
    board = build_leaderboard([record, {**record, "category": "zipper"}])
    rows = {r["category"]: r for r in board.rows}
    assert rows["carpet"][("uninformed_students", "pro", "paper")] == pytest.approx(0.695)
    assert rows["zipper"][("uninformed_students", "pro", "paper")] == pytest.approx(0.933)
    assert rows["Mean"][("uninformed_students", "pro", "paper")] == pytest.approx((0.695 + 0.933) / 2)
    assert rows["carpet"][("uninformed_students", "image_auroc", "paper")] is None  # the paper reports PRO only
    markdown = to_markdown(board, source="runs/")
    assert "## mvtec: PRO" in markdown and "| carpet | 0.700 (paper 0.695) |" in markdown


# --- end to end on synthetic data (Lightning fit + test + evaluator) ----------------------------------------
def _fitted(tmp_path, category: str, seed: int, max_steps: int, **settings):
    datamodule = synthetic_datamodule(tmp_path / "synthetic", category, image_size=64, batch_size=4,
                                      train_repeats=10, seed=seed, synthetic=SMALL_SYNTHETIC)
    fitted = fit_and_test(
        lambda: UninformedStudents(**settings, optimizer=lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)),
        datamodule, max_steps=max_steps, seed=seed)
    assert fitted.fit.changed(fitted.module, "model.students.")
    assert torch.isfinite(fitted.fit.logged["train/loss"])
    return fitted


@pytest.mark.slow
def test_uninformed_students_learns_on_synthetic(tmp_path):
    """End to end on the synthetic washer with an untrained-weights teacher (backbone=none: the seeded
    random-init patch network): p = 17, three students, width 0.125, 64 px images, 30 steps of 4 images
    (32×32 training crops, Adam 1e-3), held-out standardisation, shared evaluator.

    Measured on CPU, seeds 0/1/2/3: image AUROC 0.766 / 0.766 / 0.758 / 0.711, pixel AUROC 0.783 /
    0.755 / 0.802 / 0.788, PRO 0.465 / 0.482 / 0.410 / 0.447. Chance: AUROC 0.5; PRO ≈ 0.15 (a random
    or constant map gives PRO(FPR) = FPR, i.e. 0.15 after normalising the area up to FPR 0.3).
    After a single step (seed 0) pixel AUROC is 0.495 — at chance — so the pixel threshold shows that
    the students' regression, not the architecture alone, localises the defects. Thresholds sit
    below the lowest measured seed.
    """
    settings = dict(patch_sizes=[17], n_students=3, descriptor_dim=128, width=0.125, train_crop=32)
    metrics = _fitted(tmp_path, "washer", seed=0, max_steps=30, **settings).metrics
    assert metrics["image_auroc"] >= 0.65, metrics
    assert metrics["pixel_auroc"] >= 0.70, metrics
    assert metrics["pro"] >= 0.35, metrics


def test_cli_offline_without_weights_stops_with_one_error_naming_the_file(run_cli, tmp_path):
    """`anobench train method=uninformed_students backbone=resnet18` offline, no ImageNet file: exit non-zero,
    the message names the file expected; a failed result records pretrained=true."""
    torch_home = tmp_path / "torch"
    proc = run_cli("train", "method=uninformed_students", "backbone=resnet18", "trainer=smoke",
                   "method.module.patch_sizes=[17]", "method.input.image_size=32", "data.synthetic.n_train=4",
                   "data.synthetic.n_test_good=2", "data.synthetic.n_test_per_defect=1", check=False,
                   env={"TORCH_HOME": str(torch_home), "ANOBENCH_OFFLINE": "1"})
    assert proc.returncode != 0
    expected = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("WeightsNotFoundError: pretrained weights for backbone 'resnet18' not found") == 1
    assert "Traceback" not in proc.stderr and proc.returncode == 2  # one clear error, no stack trace
    import json

    results = list((tmp_path / "results" / "runs").rglob("result.json"))
    assert len(results) == 1
    record = json.loads(results[0].read_text())
    assert record["status"] == "failed" and record["error"]["type"] == "WeightsNotFoundError"
    assert record["config"]["backbone"]["pretrained"] is True


@pytest.mark.parametrize("patch_size", [17, 33, 65])
def test_border_band_sees_image_not_padding(patch_size):
    """Reflect padding (reference implementation): on a uniform image every p×p patch, border ones
    included, is the same uniform patch, so the descriptor and the score are the same at the border as
    inside. Zero padding made the border band score +1.4σ above the interior on normal images."""
    torch.manual_seed(0)
    model = StudentTeacherModel([patch_size], n_students=2, descriptor_dim=8, width=0.125).eval()
    image = torch.full((1, 3, 80, 80), 0.7)
    image[:, 1] = 0.2
    dense = model.teachers[str(patch_size)].dense(image)
    torch.testing.assert_close(dense, dense[..., 40:41, 40:41].expand_as(dense), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        score = model(image).anomaly_map
    assert float(score.max() - score.min()) <= 1e-4 * max(1.0, float(score.abs().max()))
    # a textured image: the border band's descriptors stay in the interior's range (zero padding: far out)
    texture = F.interpolate(torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1)), size=(80, 80),
                            mode="bilinear", align_corners=False)
    d = model.teachers[str(patch_size)].dense(texture)
    band = torch.zeros(80, 80, dtype=torch.bool)
    band[:4] = band[-4:] = True
    band[:, :4] = band[:, -4:] = True
    inner, outer = d[..., ~band], d[..., band]
    centre = inner.mean(dim=-1, keepdim=True)
    assert (outer - centre).norm(dim=1).mean() <= 1.5 * (inner - centre).norm(dim=1).mean()


def test_teacher_targets_are_normalised_per_channel():
    """Students regress (T − μ)/σ: over the training images every channel of the targets has mean 0 and
    std 1 (the teacher's raw descriptors do not), both in scoring and in the training loss."""
    torch.manual_seed(0)
    module = UninformedStudents(patch_sizes=[17], n_students=1, **SMALL, val_fraction=0.0)
    images = F.interpolate(torch.rand(6, 3, 8, 8), size=(32, 32), mode="bilinear", align_corners=False)
    module.fit_teacher_statistics(_loader(images))
    from anobench.methods.uninformed_students.torch_model import normalize_images

    x = normalize_images(images)
    raw = module.model.teachers["17"].dense(x)
    assert (raw.mean(dim=(0, 2, 3)).abs().max() > 0.05) or ((raw.std(dim=(0, 2, 3)) - 1).abs().max() > 0.2)
    targets = module.model.teacher_targets(x, 17)
    torch.testing.assert_close(targets.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-3, rtol=0)
    torch.testing.assert_close(targets.std(dim=(0, 2, 3), unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    # training loss with students predicting 0 everywhere = mean ‖target‖² = d
    for student in module.model.students["17"]:
        for param in student.parameters():
            param.data.zero_()
    module.train_crop = None
    assert module.compute_losses(images)["loss"].item() == pytest.approx(16.0, rel=1e-3)
