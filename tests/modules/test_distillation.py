import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_probe import DistillationModule
from tests.core.test_losses import _reference_kd
from tests.modules.conftest import tiny_student, tiny_teacher, tiny_trainer

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, 3, 16, 16, generator=g),
        torch.randint(3, (n,), generator=g),
        torch.zeros(n, 16, 16, dtype=torch.bool),
    )


# ---------------------------------------------------------------- losses
def test_training_step_returns_exactly_the_hinton_loss() -> None:
    student, teacher = tiny_student(), tiny_teacher()
    module = DistillationModule(student, teacher, kd_weight=1.0, ce_weight=0.0, temperature=4.0)
    x, y, _ = _batch()
    loss = module.training_step((x, y), 0)
    student_logits = student(x)  # train mode, batch statistics: the same logits as inside the step
    with torch.no_grad():
        teacher_logits = teacher.eval()(x)
    expected = _reference_kd(student_logits.detach().double().numpy(), teacher_logits.double().numpy(), 4.0)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_distill_loss_is_the_weighted_sum_of_its_terms() -> None:
    module = DistillationModule(
        tiny_student(),
        tiny_teacher(),
        kd_weight=0.7,
        ce_weight=0.3,
        feature_weight=2.0,
        feature_pairs={"features.conv2": "layer2.0.conv2"},
        example_input=(3, 16, 16),
    )
    x, y, _ = _batch()
    _, terms = module.compute_losses(x, y)
    expected = 0.3 * terms["loss_ce"] + 0.7 * terms["loss_kd"] + 2.0 * terms["loss_feature"]
    torch.testing.assert_close(terms["loss"], expected)


def test_baseline_is_plain_cross_entropy() -> None:
    student = tiny_student()
    module = DistillationModule(student)
    x, y, _ = _batch()
    _, terms = module.compute_losses(x, y)
    assert set(terms) == {"loss", "loss_ce"}
    torch.testing.assert_close(terms["loss"], F.cross_entropy(student(x), y))


# ---------------------------------------------------------------- teacher hygiene
def test_teacher_is_unchanged_and_in_eval_mode_in_every_training_step(
    tmp_path: Path, data: pl.LightningDataModule
) -> None:
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes_seen: list[bool] = []
    teacher.register_forward_pre_hook(lambda m, i: modes_seen.append(any(s.training for s in m.modules())))
    module = DistillationModule(tiny_student(), teacher, feature_pairs={"features.conv2": "layer2.0.conv2"})
    trainer = tiny_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=1)
    trainer.fit(module, datamodule=data)
    assert len(modes_seen) >= 6 and not any(modes_seen)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN buffers included
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


def test_checkpoint_has_no_teacher_keys_and_reloads_strictly(tmp_path: Path, data: pl.LightningDataModule) -> None:
    module = DistillationModule(tiny_student(), tiny_teacher(), feature_pairs={"features.conv2": "layer2.0.conv2"})
    trainer = tiny_trainer(tmp_path)
    trainer.fit(module, datamodule=data)
    path = tmp_path / "kd.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)
    assert "adapters.features__conv2.weight" in state  # adapters are saved with the student
    # a fresh module built without example_input learns the adapter shapes from the checkpoint
    reloaded = DistillationModule.load_from_checkpoint(
        path, student=tiny_student(), teacher=tiny_teacher(), strict=True
    )
    for key, value in module.student.state_dict().items():
        assert torch.equal(value, reloaded.student.state_dict()[key])
    torch.testing.assert_close(reloaded.adapters["features__conv2"].weight, module.adapters["features__conv2"].weight)
    DistillationModule(
        tiny_student(), tiny_teacher(), example_input=(3, 16, 16), feature_pairs={"features.conv2": "layer2.0.conv2"}
    ).load_state_dict(state, strict=True)
    # the from-scratch baseline loads the student of a distilled run strictly too
    DistillationModule(tiny_student()).load_state_dict(
        {k: v for k, v in state.items() if not k.startswith("adapters.")}
    )


def test_teacher_can_be_kept_in_checkpoints() -> None:
    module = DistillationModule(tiny_student(), tiny_teacher(), checkpoint_teacher=True)
    assert any(k.startswith("teacher.") for k in module.state_dict())


def test_resume_from_a_checkpoint_without_the_teacher(tmp_path: Path, data: pl.LightningDataModule) -> None:
    module = DistillationModule(tiny_student(), tiny_teacher())
    trainer = tiny_trainer(tmp_path)
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    resumed = tiny_trainer(tmp_path, max_epochs=2)
    resumed.fit(DistillationModule(tiny_student(), tiny_teacher()), datamodule=data, ckpt_path=tmp_path / "one.ckpt")
    assert resumed.current_epoch == 2 and resumed.global_step == 2 * trainer.global_step


def test_eval_mode_warning_is_silenced_for_the_teacher_only(tmp_path: Path, data: pl.LightningDataModule) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, max_steps=1).fit(DistillationModule(tiny_student(), tiny_teacher()), datamodule=data)
    assert not [w for w in caught if "in eval mode at the start of training" in str(w.message)]
    student = tiny_student()
    student.features.bn1.eval()  # the user's own module in eval mode: Lightning's warning must reach them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_trainer(tmp_path, max_steps=1).fit(DistillationModule(student, tiny_teacher()), datamodule=data)
    assert [w for w in caught if "in eval mode at the start of training" in str(w.message)]
    assert not any("in eval mode" in str(f[1].pattern if f[1] else "") for f in warnings.filters)  # filter removed


# ---------------------------------------------------------------- feature KD and adapters
def test_adapters_are_built_only_where_shapes_differ() -> None:
    pairs = {"features.conv2": "layer2.0.conv2", "head.fc": "head.fc", "head.flatten": "head.flatten"}
    module = DistillationModule(
        tiny_student(), tiny_teacher(), feature_pairs=pairs, example_input=torch.randn(2, 3, 16, 16)
    )
    conv = module.adapters["features__conv2"]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels, conv.kernel_size) == (8, 16, (1, 1))
    linear = module.adapters["head__flatten"]
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (8, 16)
    assert "head__fc" not in module.adapters  # logits have the same shape: no adapter


def test_adapters_are_built_at_setup_and_train_with_the_student(tmp_path: Path, data: pl.LightningDataModule) -> None:
    module = DistillationModule(tiny_student(), tiny_teacher(), feature_pairs={"features.conv2": "layer2.0.conv2"})
    assert len(module.adapters) == 0  # no example input yet: built from one training batch in setup
    tiny_trainer(tmp_path, max_steps=1).fit(module, datamodule=data)
    before = module.adapters["features__conv2"].weight.detach().clone()
    tiny_trainer(tmp_path, max_steps=2).fit(module, datamodule=data)
    assert not torch.equal(before, module.adapters["features__conv2"].weight)


def test_adapter_mismatch_is_refused_with_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"different spatial sizes: student \(2, 4, 16, 16\), teacher \(2, 16, 8, 8\)"):
        DistillationModule(
            tiny_student(),
            tiny_teacher(),
            feature_pairs={"features.conv1": "layer2.0.conv2"},
            example_input=(3, 16, 16),
        )


@pytest.mark.parametrize("resize", ["pool", "interpolate"])
def test_feature_resize_matches_spatial_sizes_before_the_projection(resize: str) -> None:
    module = DistillationModule(
        tiny_student(),
        tiny_teacher(),
        feature_pairs={"features.conv1": "layer2.0.conv2"},
        feature_resize=resize,
        example_input=(3, 16, 16),
    )
    adapter = module.adapters["features__conv1"]
    assert [type(m).__name__ for m in adapter] == ["Resize", "Conv2d"] and adapter[0].mode == resize
    batch = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss) and module.hparams["feature_resize"] == resize
    loss.backward()
    assert adapter[1].weight.grad is not None and adapter[1].weight.grad.abs().sum() > 0


def test_unknown_layer_names_list_close_matches() -> None:
    with pytest.raises(
        ValueError,
        match=r"`feature_pairs`='features.conv9' is not a module of VGG; close matches: 'features.conv2', 'features.conv1'",
    ):
        DistillationModule(tiny_student(), tiny_teacher(), feature_pairs={"features.conv9": "layer2.0.conv2"})
    with pytest.raises(
        ValueError, match=r"`feature_pairs`='layer2.conv2' is not a module of ResNet; close matches: 'layer2.0.conv2'"
    ):
        DistillationModule(tiny_student(), tiny_teacher(), feature_pairs={"features.conv2": "layer2.conv2"})
    with pytest.raises(
        ValueError, match=r"`freeze_through`='feature.conv1' is not a module of VGG; close matches: 'features.conv1'"
    ):
        DistillationModule(tiny_student(), stage="head", freeze_through="feature.conv1")


# ---------------------------------------------------------------- two-phase stages
def test_mimic_stage_trains_only_the_feature_mse(tmp_path: Path, data: pl.LightningDataModule) -> None:
    student, teacher = tiny_student(), VGG_same()
    module = DistillationModule(
        student, teacher, stage="mimic", feature_pairs="features.conv2", example_input=(3, 16, 16)
    )
    assert len(module.adapters) == 0  # same architecture: no adapter
    x, y, _ = _batch()
    _, terms = module.compute_losses(x, y)
    assert set(terms) == {"loss", "loss_feature"}
    torch.testing.assert_close(
        terms["loss"],
        F.mse_loss(
            student.features.conv2(
                student.features.pool1(student.features.relu1(student.features.bn1(student.features.conv1(x))))
            ),
            teacher.eval().features.conv2(
                teacher.features.pool1(teacher.features.relu1(teacher.features.bn1(teacher.features.conv1(x))))
            ),
        ),
    )
    head_before = student.head.fc.weight.detach().clone()
    tiny_trainer(tmp_path, max_steps=3).fit(module, datamodule=data)
    assert torch.equal(head_before, student.head.fc.weight)  # labels are never used: the head is untouched


def VGG_same() -> nn.Module:
    teacher = tiny_student()
    teacher.eval()
    return teacher


def test_head_stage_freezes_exactly_the_modules_up_to_the_layer(tmp_path: Path, data: pl.LightningDataModule) -> None:
    student = tiny_student()
    module = DistillationModule(student, stage="head", freeze_through="features.bn2", example_input=(3, 16, 16))
    assert module.frozen_modules == [
        "features.conv1",
        "features.bn1",
        "features.relu1",
        "features.pool1",
        "features.conv2",
        "features.bn2",
    ]
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {"head.fc.weight", "head.fc.bias"}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    tiny_trainer(tmp_path, max_steps=3).fit(module, datamodule=data)
    after = student.state_dict()
    frozen_keys = [k for k in after if k.startswith(("features.conv", "features.bn"))]
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys)  # weights and BatchNorm statistics
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])
    assert not student.features.bn1.training and student.head.training


def test_stage_options_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r"stage='mimic' needs a teacher and exactly one layer pair"):
        DistillationModule(tiny_student(), tiny_teacher(), stage="mimic")
    with pytest.raises(ValueError, match=r"stage='head' needs `freeze_through`"):
        DistillationModule(tiny_student(), stage="head")
    with pytest.raises(ValueError, match=r"`feature_pairs`=\{'features.conv2': 'features.conv2'\} needs a teacher"):
        DistillationModule(tiny_student(), feature_pairs="features.conv2")
    with pytest.raises(ValueError, match=r"`stage` must be one of \('distill', 'mimic', 'head'\), got 'phase1'"):
        DistillationModule(tiny_student(), stage="phase1")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(temperature=0.0), r"`temperature` must be > 0, got 0.0"),
        (dict(kd_weight=-1.0), r"`kd_weight` must be >= 0, got -1.0"),
        (dict(optimizer="adam"), r"`optimizer` must be one of \('sgd', 'adamw'\), got 'adam'"),
        (dict(schedule="linear"), r"`schedule` must be one of \(None, 'cosine', 'step'\), got 'linear'"),
        (dict(lr=0), r"`lr` must be > 0, got 0"),
        (dict(milestones=(0.8, 0.5)), r"`milestones` must be increasing fractions"),
    ],
)
def test_bad_options_are_refused_at_construction(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationModule(tiny_student(), tiny_teacher(), **kw)


@pytest.mark.parametrize(("optimizer", "schedule"), [("sgd", "cosine"), ("adamw", "step"), ("sgd", None)])
def test_optimiser_and_schedule_options(
    tmp_path: Path, data: pl.LightningDataModule, optimizer: str, schedule: str
) -> None:
    module = DistillationModule(tiny_student(), optimizer=optimizer, schedule=schedule, lr=0.1)
    trainer = tiny_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, datamodule=data)
    opt = trainer.optimizers[0]
    assert type(opt).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[optimizer]
    lr = opt.param_groups[0]["lr"]
    assert {"cosine": lr < 0.01, "step": lr == pytest.approx(0.001), None: lr == 0.1}[schedule]


def test_logged_metrics(tmp_path: Path, data: pl.LightningDataModule) -> None:
    module = DistillationModule(tiny_student(), tiny_teacher(), feature_pairs={"features.conv2": "layer2.0.conv2"})
    trainer = tiny_trainer(tmp_path)
    trainer.fit(module, datamodule=data)
    names = set(trainer.logged_metrics)
    trainer.test(module, datamodule=data, verbose=False)
    names |= set(trainer.logged_metrics)
    for split in ("train", "val", "test"):
        assert {
            f"{split}/loss",
            f"{split}/loss_ce",
            f"{split}/loss_kd",
            f"{split}/loss_feature",
            f"{split}/acc",
        } <= names


def test_tensorboard_logger_with_the_builtin_data_module(tmp_path: Path, data: pl.LightningDataModule) -> None:
    # Lightning merges module and datamodule hyperparameters for loggers; num_classes must agree.
    logger = pl.loggers.TensorBoardLogger(str(tmp_path), name="run", version="")
    trainer = tiny_trainer(tmp_path, logger=logger)
    trainer.fit(DistillationModule(tiny_student(), tiny_teacher()), datamodule=data)
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "hparams.yaml").read_text().count("num_classes: 3") == 1
