"""The models, images and masks that ``bench_sigma.py`` probes: self-contained, deterministic, nothing cached.

- ``trained-vgg``: the demo's student VGG(16,32,64)×2 trained ``epochs`` epochs on the demo's 4000 built-in
  shapes with the demo's AdamW recipe (10 epochs: validation accuracy 0.91), probed at ``features.bn6`` (the
  last convolution's pre-ReLU output), λ = 7;
- ``random-vgg``: the same network at its initialisation (the trained one's starting weights), same layer;
- ``resnet``: a :class:`kd_probe.models.ResNet` (16,32,64), one basic block per stage, trained like the VGG,
  probed at the last block's output ``layer3.0.relu2``, λ = 6 (the paper's value for ResNets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd_probe import ShapesDataModule
from kd_probe.models import VGG, ResNet

MODELS = ("trained-vgg", "random-vgg", "resnet")


@dataclass
class ProbedModel:
    """A network to probe, the layer and λ it is probed with, and its validation accuracy."""

    name: str
    model: nn.Module
    layer: str
    lam: float
    accuracy: float


def shapes_data(probe_size: int, train_size: int = 4000) -> ShapesDataModule:
    """The demo's built-in data (6 classes, 32 px, the demo's 4000 training images), generated with seed 0."""
    data = ShapesDataModule(
        num_classes=6, image_size=32, train_size=train_size, val_size=512, probe_size=probe_size, batch_size=64
    )
    data.setup("fit")
    return data


def probe_images(data: ShapesDataModule, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` images of the held-out probe split ``[N, 3, 32, 32]`` and their masks ``[N, 32, 32]``."""
    samples = [data.probe_set[i] for i in range(count)]
    images = torch.stack([sample[0] for sample in samples]).to(device)
    masks = torch.stack([sample[2] for sample in samples])
    return images, masks


def probed_models(data: ShapesDataModule, names: list[str], epochs: int, device: torch.device) -> list[ProbedModel]:
    """The networks named in ``names`` (from :data:`MODELS`), each built and trained from a fixed seed."""
    result = []
    for name in names:
        torch.manual_seed(0)
        if name.endswith("vgg"):
            model: nn.Module = VGG(num_classes=6, widths=(16, 32, 64), convs_per_stage=2).to(device)
            layer, lam = "features.bn6", 7.0
        elif name == "resnet":
            model = ResNet(num_classes=6, widths=(16, 32, 64), blocks_per_stage=1).to(device)
            layer, lam = "layer3.0.relu2", 6.0
        else:
            raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
        if name != "random-vgg":
            _train(model, data, epochs, device)
        result.append(ProbedModel(name, model.eval(), layer, lam, _accuracy(model, data, device)))
    return result


def trained_vgg(data: ShapesDataModule, epochs: int, device: torch.device) -> nn.Module:
    """The ``trained-vgg`` network alone (for the speed section)."""
    return probed_models(data, ["trained-vgg"], epochs, device)[0].model


def _train(model: nn.Module, data: ShapesDataModule, epochs: int, device: torch.device) -> None:
    torch.manual_seed(0)  # the loader's shuffling
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        for images, labels, _ in data.train_dataloader():
            loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, data: ShapesDataModule, device: torch.device) -> float:
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels, _ in data.val_dataloader():
        correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
        total += labels.numel()
    model.train(was_training)
    return correct / total
