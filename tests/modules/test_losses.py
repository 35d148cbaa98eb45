"""``DistillationModule(losses=[...])`` (kd_probe/modules/_losses.py): every method of kd_probe.losses trains a
student, its learnable parts train and are saved with it, the teacher never changes, and mistakes are one
sentence."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from kd_probe import DistillationModule
from kd_probe.losses import (
    AT,
    CC,
    CRD,
    DIST,
    DKD,
    KD,
    NST,
    PKT,
    RKD,
    SP,
    VID,
    FitNets,
    LogitStandardKD,
)
from kd_probe.models import VGG
from tests.modules.conftest import tiny_data, tiny_trainer

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

LAYER = {"student_layers": "features.relu2", "teacher_layers": "features.relu2"}
METHODS: list[tuple[type, dict[str, Any]]] = [
    (KD, {}),
    (DKD, {}),
    (DIST, {}),
    (LogitStandardKD, {}),
    (FitNets, LAYER),
    (AT, LAYER),
    (NST, LAYER),
    (VID, LAYER),
    (SP, {}),
    (PKT, {}),
    (RKD, {}),
    (CC, {}),
    (CRD, {"negatives": 8, "feat_dim": 8}),
]


def _networks() -> tuple[VGG, VGG]:
    torch.manual_seed(0)
    teacher = VGG(num_classes=3, widths=(8, 16), convs_per_stage=1)
    student = VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)
    return student, teacher


def _fixed_batch(data: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = next(iter(data.train_dataloader()))
    return batch[0], batch[1], batch[-1]


@pytest.mark.parametrize(("method", "options"), METHODS, ids=[m.__name__ for m, _ in METHODS])
def test_a_short_fit_lowers_the_methods_loss_and_leaves_the_teacher_as_it_was(
    tmp_path: Path, method: type, options: dict[str, Any]
) -> None:
    student, teacher = _networks()
    before = copy.deepcopy(teacher.state_dict())
    data = tiny_data(train_size=32, batch_size=32, with_index=method is CRD)
    data.setup("fit")
    inputs, labels, indices = _fixed_batch(data)
    loss = method(**options, **({"num_samples": 32} if method is CRD else {}))
    module = DistillationModule(
        student, teacher, losses=[loss], ce_weight=0.0, optimizer="adamw", lr=1e-2, schedule=None, example_input=inputs
    )
    name = f"loss_{method.__name__.lower()}"

    def term() -> float:
        module.eval()
        with torch.no_grad():
            _, terms = module.compute_losses(inputs, labels, indices if method is CRD else None)
        module.train()
        return float(terms[name])

    first = term()
    trainer = tiny_trainer(tmp_path, max_epochs=10, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert term() < first, name
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    owned = {id(p) for p in module.losses.parameters()}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert owned <= optimised


def test_the_kd_method_is_the_shorthand_it_replaces() -> None:
    student, teacher = _networks()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    shorthand = DistillationModule(student, teacher, temperature=4.0, kd_weight=0.9, ce_weight=0.1)
    explicit = DistillationModule(student, teacher, losses=[KD(temperature=4.0, weight=0.9)], ce_weight=0.1)
    explicit.prepare(x)
    _, a = shorthand.compute_losses(x, y)
    _, b = explicit.compute_losses(x, y)
    assert torch.allclose(a["loss"], b["loss"], rtol=1e-6, atol=1e-7)
    assert torch.allclose(a["loss_kd"], b["loss_kd"], rtol=1e-6, atol=1e-7)


def test_learnable_parts_are_saved_and_load_into_a_module_built_alike() -> None:
    student, teacher = _networks()
    x = torch.randn(4, 3, 16, 16)
    module = DistillationModule(student, teacher, losses=[VID(**LAYER), FitNets(**LAYER)], example_input=x)
    keys = [k for k in module.state_dict() if k.startswith("losses.")]
    assert keys and not any(k.startswith("teacher.") for k in module.state_dict())
    twin = DistillationModule(*_networks(), losses=[VID(**LAYER), FitNets(**LAYER)], example_input=(3, 16, 16))
    twin.load_state_dict(module.state_dict())
    for key in keys:
        assert torch.equal(twin.state_dict()[key], module.state_dict()[key])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"teacher": None, "losses": [KD()]}, "`losses`=['loss_kd'] need a teacher, got teacher=None."),
        ({"losses": [KD(), KD()]}, "`losses` holds two methods of one kind ['loss_kd', 'loss_kd']"),
        ({"losses": KD()}, "`losses` must be a list of kd_probe.losses methods, got KD."),
        ({"losses": [torch.nn.MSELoss()]}, "`losses` must hold kd_probe.losses methods (DistillationLoss), got ['MSELoss']."),
        ({"losses": [AT(**LAYER)], "feature_pairs": "features.relu2"}, "`feature_pairs` and `losses` both set feature terms"),
    ],
)  # fmt: skip
def test_mistakes_are_one_sentence(options: dict[str, Any], message: str) -> None:
    student, teacher = _networks()
    arguments: dict[str, Any] = {"teacher": teacher, **options}
    with pytest.raises(ValueError) as error:
        DistillationModule(student, **arguments)
    assert str(error.value).startswith(message)


def test_crd_without_indices_says_what_it_needs(tmp_path: Path) -> None:
    student, teacher = _networks()
    module = DistillationModule(student, teacher, losses=[CRD(negatives=4, feat_dim=8)], schedule=None)
    with pytest.raises(ValueError, match="CRD needs each sample's dataset index"):
        tiny_trainer(tmp_path, max_epochs=1).fit(module, datamodule=tiny_data(train_size=16, batch_size=8))
