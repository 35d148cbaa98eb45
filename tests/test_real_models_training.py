"""The probes through a Trainer on look-alikes of real networks, ViT tokens, and compiled students (issue 14).

Teacher ResNet-18-style → student MobileNetV3-style or ViT-style, with every probe attached; Grad-CAM and
UniCAM on transformer tokens ``[N, 1 + H·W, D]``; a ``torch.compile``d student probed through its original
module, with layer names with or without ``_orig_mod.``, without any recompilation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe import (
    AgreementProbe,
    DistillationModule,
    KnowledgePointProbe,
    ShapesDataModule,
    UniCAM,
    UniCAMProbe,
    estimate_sigma_maps,
)
from kd_probe.functional import capture_outputs, grad_cam, layer_features
from tests.callbacks.conftest import trainer
from tests.lookalikes import mobilenetv3_like, resnet18_like, vit_like

SIGMA = dict(grid=4, samples=4, steps=25)  # the boost/stop check happens at step 3


def _data() -> ShapesDataModule:
    return ShapesDataModule(
        num_classes=3, image_size=32, train_size=32, val_size=16, test_size=16, probe_size=6, batch_size=16
    )


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return resnet18_like(3, width=8)


def _mobilenet() -> nn.Module:
    torch.manual_seed(1)
    return mobilenetv3_like(3, width=8)


def _vit() -> nn.Module:
    torch.manual_seed(2)
    return vit_like(3, image_size=32, patch_size=4, dim=16, depth=2, heads=2)


def _images(count: int = 8, seed: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, 32, 32, generator=generator), torch.arange(count) % 3


def _finite(entry: dict[str, Any], keys: list[str]) -> None:
    assert entry.get("failed") is None, entry["failed"]
    for key in keys:
        assert math.isfinite(float(entry[key])), (key, entry[key])


# ------------------------------------------------------------------------------------------ through a Trainer


def test_resnet_teacher_to_mobilenet_student_with_every_probe(tmp_path: Path) -> None:
    data = _data()
    student_cam, teacher_cam = "features.4.block.1.1", "layer3.1.bn2"  # 2 × 2 maps at 32 px, before in-place ops
    probes = [
        KnowledgePointProbe(data, layer="features.3.block.2.1", log_images=0, **SIGMA),
        KnowledgePointProbe(data, layer="layer4.1.bn2", module="teacher", name="teacher", epochs=[0], **SIGMA),
        AgreementProbe(data, teacher_layer=teacher_cam, student_layer=student_cam, transforms=("shift",)),
        UniCAMProbe(
            data,
            layers=[("features.6", "layer4"), ("features.3.block.2.1", "layer3.0.bn1")],
            cam_layer=(student_cam, teacher_cam),
        ),
    ]
    module = DistillationModule(
        _mobilenet(), _teacher(), feature_pairs={"features.3.block.2.1": "layer3.0.bn1"}, feature_resize="pool"
    )
    trainer(tmp_path, max_epochs=1, callbacks=probes).fit(module, datamodule=data)
    student_points, teacher_points, agreement, unicam = probes
    assert [e["epoch"] for e in student_points.history] == [0, 1]
    assert [e["epoch"] for e in teacher_points.history] == [0]
    for entry in student_points.history + teacher_points.history:
        _finite(entry, ["fg_ratio", "baseline"])
        assert entry["entropy"].shape == (6, 4, 4) and bool(entry["entropy"].isfinite().all())
    assert [e["epoch"] for e in agreement.history] == [0, 1]
    for entry in agreement.history:
        _finite(entry, ["cam_cosine", "teacher_fooling_rate/eps_1", "invariance/shift/student"])
    assert [e["epoch"] for e in unicam.history] == [0, 1]
    for entry in unicam.history:
        _finite(entry, [f"{kind}/{layer}" for kind in ("fss", "rs/distilled") for layer in ("features.6",)])
        _finite(entry, ["rs/residual/features.3.block.2.1"])


def test_resnet_teacher_to_vit_student_with_every_probe(tmp_path: Path) -> None:
    data = _data()
    probes = [
        KnowledgePointProbe(data, layer="blocks.0", log_images=0, grid=8, samples=4, steps=25),  # one unit a patch
        AgreementProbe(data, teacher_layer="layer3.1.bn2", student_layer="blocks.1", transforms=("shift",)),
        UniCAMProbe(data, layers=[("norm", "layer4"), ("blocks.0", "layer3")], cam_layer=("blocks.1", "layer3.1.bn2")),
    ]
    module = DistillationModule(_vit(), _teacher(), optimizer="adamw", lr=1e-3)
    trainer(tmp_path, max_epochs=1, callbacks=probes).fit(module, datamodule=data)
    points, agreement, unicam = probes
    for entry in points.history:
        _finite(entry, ["fg_ratio", "baseline"])
        assert entry["entropy"].shape == (6, 8, 8) and bool(entry["entropy"].isfinite().all())
    for entry in agreement.history:
        _finite(entry, ["cam_cosine", "invariance/shift/student"])
    for entry in unicam.history:
        _finite(entry, ["fss/norm", "rs/student/norm", "rs/distilled/blocks.0", "rs/residual/blocks.0"])
    assert len(points.history) == len(agreement.history) == len(unicam.history) == 2


def test_the_probes_do_not_change_the_training_of_inplace_networks(tmp_path: Path) -> None:
    """Same seed, same batches: the weights and BatchNorm statistics after fit are bitwise those without probes."""
    data = _data()

    def fit(root: Path, probes: list[Any]) -> DistillationModule:
        torch.manual_seed(7)
        module = DistillationModule(_mobilenet(), _teacher())
        trainer(root, max_epochs=1, callbacks=probes).fit(module, datamodule=data)
        return module

    plain = fit(tmp_path / "plain", [])
    probed = fit(
        tmp_path / "probed",
        [
            KnowledgePointProbe(data, layer="features.3.block.2.1", log_images=0, **SIGMA),
            AgreementProbe(data, teacher_layer="layer3.1.bn2", student_layer="features.4.block.1.1"),
            UniCAMProbe(data, layers=[("features.6", "layer4")], cam_layer=("features.4.block.1.1", "layer3.1.bn2")),
        ],
    )
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ------------------------------------------------------------------------------------------ ViT tokens


def _token_cam(vit: nn.Module, images: Tensor, labels: Tensor, layer: str) -> Tensor:
    """Grad-CAM by hand: drop the class token, lay the 8 × 8 patch tokens out as a map, spec §2."""
    vit.eval()
    with capture_outputs(vit, [layer]) as outputs:
        logits = vit(images)
    tokens = outputs[layer]
    (gradient,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), tokens)

    def as_map(t: Tensor) -> Tensor:
        return t[:, 1:].transpose(1, 2).reshape(len(images), -1, 8, 8)

    activation, gradient = as_map(tokens), as_map(gradient)
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1))
    return F.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0].detach()


@pytest.mark.parametrize("layer", ["blocks.0", "blocks.1", "norm"])
def test_grad_cam_on_vit_tokens_is_the_map_of_the_patch_tokens(layer: str) -> None:
    vit = _vit()
    images, labels = _images()
    expected = _token_cam(vit, images, labels, layer)
    for prefix_tokens in (None, 1):
        cams = grad_cam(vit, images, labels, layer=layer, prefix_tokens=prefix_tokens)
        assert cams.shape == (8, 32, 32)
        torch.testing.assert_close(cams, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_grad_cam_on_vit_tokens_refuses_a_prefix_that_does_not_tile_the_image() -> None:
    images, labels = _images()
    with pytest.raises(ValueError, match=r"`layer`='blocks.1' outputs 65 tokens.*`prefix_tokens`=2"):
        grad_cam(_vit(), images, labels, layer="blocks.1", prefix_tokens=2)
    with pytest.raises(ValueError, match=r"prefix_tokens"):
        UniCAM(_vit(), _vit(), layer="blocks.1", prefix_tokens=2)(images, labels)


def test_grad_cam_on_a_layer_whose_tokens_cannot_be_laid_out_is_refused() -> None:
    images, labels = _images()
    with pytest.raises((TypeError, ValueError), match=r"blocks.1.attn"):  # attention returns a tuple, not tokens
        grad_cam(_vit(), images, labels, layer="blocks.1.attn")


def test_unicam_on_vit_tokens_gives_maps_of_the_patch_grid() -> None:
    images, labels = _images()
    vit, teacher = _vit(), _teacher().eval()
    result = UniCAM(vit, teacher, layer="blocks.1", feature_layer_x="norm", feature_layer_y="layer4")(images, labels)
    explicit = UniCAM(
        vit, teacher, layer="blocks.1", feature_layer_x="norm", feature_layer_y="layer4", prefix_tokens=1
    )(images, labels)
    assert result.maps.shape == (8, 32, 32) and math.isfinite(result.score)
    torch.testing.assert_close(result.maps, explicit.maps, rtol=0, atol=0)
    assert (
        float(result.maps.min()) >= 0
        and float(result.maps.max()) <= 1
        and bool((result.maps.flatten(1).amax(1) > 0).all())
    )


def test_sigma_maps_on_a_vit_with_a_grid_aligned_to_patches() -> None:
    images, _ = _images(2)
    maps = estimate_sigma_maps(_vit(), images, layer="blocks.1", grid=8, samples=4, steps=3)
    assert maps.sigma.shape == (2, 8, 8) and bool(maps.effective.all()) and bool(maps.entropy.isfinite().all())


# ------------------------------------------------------------------------------------------ compiled students


class _CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self) -> None:
        self.compilations = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Any:
        self.compilations += 1
        return graph.forward


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()  # no cache from earlier tests: each run compiles from scratch, well under the cache limit
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_probes_of_a_compiled_student_equal_the_eager_ones_and_never_recompile(prefix: str) -> None:
    student = _mobilenet().train()
    backend = _CountingBackend()
    compiled = torch.compile(student, backend=backend)
    images, labels = _images()
    compiled(images).sum().backward()  # a training forward and backward: the graph users care about
    compiled.zero_grad(set_to_none=True)
    count = backend.compilations
    assert count >= 1
    layer, features = prefix + "features.4.block.1.1", prefix + "features.6"
    torch.testing.assert_close(
        grad_cam(compiled, images, labels, layer=layer),
        grad_cam(student, images, labels, layer="features.4.block.1.1"),
        rtol=0,
        atol=0,
    )
    teacher = _teacher().eval()
    result = UniCAM(compiled, teacher, layer=layer, feature_layer_x=features, feature_layer_y="layer4")(images, labels)
    expected = UniCAM(
        student, teacher, layer="features.4.block.1.1", feature_layer_x="features.6", feature_layer_y="layer4"
    )(images, labels)
    torch.testing.assert_close(result.maps, expected.maps, rtol=0, atol=0)
    torch.testing.assert_close(
        layer_features(compiled, features, images), layer_features(student, "features.6", images)
    )
    maps = estimate_sigma_maps(compiled, images[:2], layer=layer, grid=4, samples=4, steps=3)
    assert bool(maps.entropy.isfinite().all())
    assert all(p.grad is None for p in student.parameters())
    compiled(images).sum().backward()  # the same training call again: the graph is reused
    assert backend.compilations == count


def _fit_compiled(tmp_path: Path, probes: list[Any]) -> tuple[int, DistillationModule]:
    torch._dynamo.reset()
    backend = _CountingBackend()
    torch.manual_seed(5)
    module = DistillationModule(torch.compile(_mobilenet(), backend=backend), _teacher())
    trainer(tmp_path, max_epochs=1, limit_val_batches=1, callbacks=probes).fit(module, datamodule=_data())
    return backend.compilations, module


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_a_compiled_student_trains_with_every_probe_and_no_extra_compilation(tmp_path: Path) -> None:
    data = _data()
    plain, _ = _fit_compiled(tmp_path / "plain", [])
    probes = [
        KnowledgePointProbe(data, layer="features.3.block.2.1", log_images=0, **SIGMA),
        AgreementProbe(
            data, teacher_layer="layer3.1.bn2", student_layer="_orig_mod.features.4.block.1.1", transforms=("shift",)
        ),
        UniCAMProbe(
            data, layers=[("_orig_mod.features.6", "layer4")], cam_layer=("features.4.block.1.1", "layer3.1.bn2")
        ),
    ]
    probed, module = _fit_compiled(tmp_path / "probed", probes)
    assert plain >= 1 and probed == plain
    for probe, key in zip(probes, ["fg_ratio", "cam_cosine", "fss/_orig_mod.features.6"], strict=True):
        assert [e["epoch"] for e in probe.history] == [0, 1]
        for entry in probe.history:
            _finite(entry, [key])
    assert type(module.student).__name__ == "OptimizedModule"  # the probes did not unwrap the user's module


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("warmed_up", [False, True], ids=["fresh", "already-compiled"])
def test_feature_kd_of_a_compiled_student_equals_the_eager_one(warmed_up: bool) -> None:
    """The feature hooks fire inside the compiled forward, also when the student was compiled before (no hooks)."""
    images, labels = _images()
    student = _mobilenet().train()
    student.get_submodule("classifier.2").p = 0.0  # no dropout: the two runs see the same logits
    twin = copy.deepcopy(student)
    backend = _CountingBackend()
    compiled = torch.compile(student, backend=backend)
    if warmed_up:  # the user ran the compiled student once (a warm-up, a sanity check) before distilling
        compiled(images)
    pairs = {"features.3.block.2.1": "layer3.0.bn1"}
    modules = []
    for network in (compiled, twin):
        torch.manual_seed(3)
        modules.append(
            DistillationModule(network, _teacher(), feature_pairs=pairs, feature_resize="pool", example_input=images)
        )
    losses = [module.train().compute_losses(images, labels)[1] for module in modules]
    for name, value in losses[1].items():
        torch.testing.assert_close(losses[0][name], value, rtol=1e-5, atol=1e-7, msg=name)
    count = backend.compilations
    modules[0].compute_losses(images, labels)
    assert backend.compilations == count  # feature hooks registered per step do not recompile
