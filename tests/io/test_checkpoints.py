"""Checkpoints from any trainer (kd_probe.models.read_state, load_weights) and a series of them to probe
(kd_probe.io.checkpoints): every format round-trips, every mistake is one sentence, a file never runs code."""

from __future__ import annotations

import copy
import os
import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn

from kd_probe import DistillationModule
from kd_probe.io.checkpoints import Checkpoint, checkpoint_series, epoch_from_name
from kd_probe.models import VGG, load_weights, read_state
from tests.modules.conftest import tiny_data, tiny_trainer

KEYS = ("state_dict", "model", "model_state_dict", "net", "student", "state", "weights", "params")


def tiny() -> VGG:
    return VGG(num_classes=3, widths=(4,), convs_per_stage=1)


def same_weights(a: nn.Module | dict[str, Tensor], b: nn.Module | dict[str, Tensor]) -> bool:
    first = a.state_dict() if isinstance(a, nn.Module) else a
    second = b.state_dict() if isinstance(b, nn.Module) else b
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def save(record: object, path: Path) -> Path:
    torch.save(record, path)
    return path


# Formats ------------------------------------------------------------------------------------------------------------


def test_the_prefixes_of_wrappers_are_stripped_when_every_key_has_them(tmp_path: Path) -> None:
    saved = tiny()
    compiled = torch.compile(saved)  # compiles lazily, at the first call: cheap here
    assert isinstance(compiled, nn.Module)
    compiled_ddp = {f"_orig_mod.module.{k}": v for k, v in saved.state_dict().items()}
    for state in (nn.DataParallel(saved).state_dict(), compiled.state_dict(), compiled_ddp):
        assert all(k.startswith(("module.", "_orig_mod.")) for k in state)
        assert same_weights(load_weights(tiny(), save({"model": state}, tmp_path / "w.pt")), saved)


@pytest.mark.parametrize("key", [None, *KEYS])
def test_a_plain_state_dict_or_one_under_each_common_key_round_trips(tmp_path: Path, key: str | None) -> None:
    saved = tiny()
    extra = {"optimizer": {"lr": 0.1}, "epoch": 4, "global_step": 40}  # a loop's own `epoch`: epochs trained
    state, metadata = read_state(
        save(saved.state_dict() if key is None else {**extra, key: saved.state_dict()}, tmp_path / "w.pt")
    )
    assert same_weights(state, saved) and same_weights(load_weights(tiny(), tmp_path / "w.pt"), saved)
    assert metadata == ({} if key is None else {"trained_epochs": 4, "global_step": 40})


def test_the_common_keys_are_tried_in_order_and_key_names_another(tmp_path: Path) -> None:
    model, ema = tiny(), tiny()
    path = save({"ema": ema.state_dict(), "net": tiny().state_dict(), "model": model.state_dict()}, tmp_path / "w.pt")
    assert same_weights(load_weights(tiny(), path), model)
    assert same_weights(load_weights(tiny(), path, key="ema"), ema)


def test_a_given_prefix_is_stripped_and_an_empty_one_strips_nothing(tmp_path: Path) -> None:
    saved = tiny()
    path = save({f"backbone.{k}": v for k, v in saved.state_dict().items()}, tmp_path / "w.pt")
    assert same_weights(load_weights(tiny(), path, prefix="backbone."), saved)
    parallel = save(nn.DataParallel(saved).state_dict(), tmp_path / "parallel.pt")
    assert all(k.startswith("module.") for k in read_state(parallel, prefix="")[0])


def test_an_epoch_in_a_tensor_is_read_and_a_float_one_is_not(tmp_path: Path) -> None:
    weights = tiny().state_dict()
    assert read_state(save({"model": weights, "epoch": torch.tensor(3)}, tmp_path / "a.pt"))[1] == {"trained_epochs": 3}
    assert read_state(save({"model": weights, "epoch": 3.0}, tmp_path / "b.pt"))[1] == {}


# A Lightning checkpoint written by a real Trainer ------------------------------------------------------------------


class Snapshots(pl.Callback):
    """The student's weights after each training epoch, keyed by the number of epochs trained (0: before)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, Tensor]] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights[0] = self.student(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.weights[trainer.current_epoch + 1] = self.student(pl_module)

    @staticmethod
    def student(pl_module: pl.LightningModule) -> dict[str, Tensor]:
        assert isinstance(pl_module, DistillationModule)
        return copy.deepcopy(pl_module.student.state_dict())


Run = tuple[DistillationModule, Path, Snapshots]


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two epochs of a tiny DistillationModule (teacher kept in the checkpoints), one checkpoint per epoch in
    ``checkpoints/`` and ``final.ckpt`` saved after ``fit`` returned."""
    root = tmp_path_factory.mktemp("lightning")
    module = DistillationModule(tiny(), tiny(), checkpoint_teacher=True)
    every_epoch = ModelCheckpoint(dirpath=root / "checkpoints", save_top_k=-1, filename="{epoch}-{step}")
    snapshots = Snapshots()
    trainer = tiny_trainer(
        root, max_epochs=2, enable_checkpointing=True, callbacks=[snapshots, every_epoch], limit_train_batches=2
    )
    trainer.fit(module, datamodule=tiny_data())
    trainer.save_checkpoint(root / "final.ckpt")
    return module, root, snapshots


def test_a_lightning_checkpoint_says_how_many_epochs_its_weights_trained(lightning_run: Run) -> None:
    _, root, snapshots = lightning_run
    for path, index, trained, step in [
        (root / "checkpoints" / "epoch=0-step=2.ckpt", 0, 1, 2),
        (root / "checkpoints" / "epoch=1-step=4.ckpt", 1, 2, 4),
        (root / "final.ckpt", 2, 2, 4),  # saved after fit returned: Lightning's epoch is then the epochs trained
    ]:
        assert torch.load(path, weights_only=True)["epoch"] == index  # Lightning's 0-based index of the epoch
        state, metadata = read_state(path)
        assert metadata == {"trained_epochs": trained, "global_step": step}
        assert same_weights(
            {k: v for k, v in state.items() if not k.startswith("teacher.")}, snapshots.weights[trained]
        )
    assert not same_weights(snapshots.weights[1], snapshots.weights[0])


def test_a_lightning_checkpoint_gives_the_student_or_the_teacher(lightning_run: Run) -> None:
    module, root, _ = lightning_run
    assert module.teacher is not None
    assert same_weights(load_weights(tiny(), root / "final.ckpt"), module.student)
    assert same_weights(load_weights(tiny(), root / "final.ckpt", role="teacher"), module.teacher)
    assert not same_weights(module.student, module.teacher)


def test_a_series_of_lightning_checkpoints_reads_their_epochs(lightning_run: Run) -> None:
    _, root, _ = lightning_run
    assert checkpoint_series(root / "checkpoints") == [
        Checkpoint(1, root / "checkpoints" / "epoch=0-step=2.ckpt"),
        Checkpoint(2, root / "checkpoints" / "epoch=1-step=4.ckpt"),
    ]
    with pytest.raises(ValueError) as error:
        checkpoint_series([root / "final.ckpt", root / "checkpoints" / "epoch=1-step=4.ckpt"])
    assert str(error.value) == (
        f"`checkpoints`: {str(root / 'final.ckpt')!r} and {str(root / 'checkpoints' / 'epoch=1-step=4.ckpt')!r} are "
        "both at epoch 2 by their contents or names; keep one file per epoch, or give `epochs`."
    )


# One sentence per mistake ---------------------------------------------------------------------------------------------


def test_weights_of_another_architecture_name_the_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = save(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError) as error:
        load_weights(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), path, argument="student_checkpoint")
    assert str(error.value) == (
        f"`student_checkpoint`={str(path)!r} does not hold the weights of this Sequential: 2 weight(s) missing, e.g. "
        "['2.weight', '2.bias']; 2 unexpected, e.g. ['1.weight', '1.bias']; 2 of another shape, e.g. '0.weight' is "
        "(3, 2) in the file but (2, 2) here; build the network with the class and arguments of the run that wrote "
        "the file."
    )


def test_keys_under_a_prefix_that_is_not_stripped_are_named_with_the_prefix_to_give(tmp_path: Path) -> None:
    network = nn.Sequential(nn.Linear(2, 2))
    path = save({f"model.{k}": v for k, v in network.state_dict().items()}, tmp_path / "w.pt")
    with pytest.raises(ValueError) as error:
        load_weights(nn.Sequential(nn.Linear(2, 2)), path)
    assert str(error.value) == (
        f"`path`={str(path)!r} does not hold the weights of this Sequential: 2 weight(s) missing, e.g. ['0.weight', "
        "'0.bias']; 2 unexpected, e.g. ['model.0.weight', 'model.0.bias']; build the network with the class and "
        "arguments of the run that wrote the file (every key in the file starts with 'model.': give "
        "`prefix`='model.')."
    )


def test_a_prefix_that_some_key_lacks_is_one_sentence(tmp_path: Path) -> None:
    path = save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "w.pt")
    assert list(read_state(path)[0]) == ["module.a", "b"]  # not every key has it: nothing is stripped
    with pytest.raises(ValueError) as error:
        read_state(path, prefix="module.", argument="checkpoints")
    assert str(error.value) == (
        f"`prefix`='module.' does not start every key of `checkpoints`={str(path)!r}: 1 of 2 key(s) lack it, e.g. "
        "['b']; give the prefix that every key shares, or leave `prefix` unset to strip 'module.' and '_orig_mod.' "
        "where every key has them."
    )


def test_a_key_that_is_not_in_the_file_lists_the_files_keys(tmp_path: Path) -> None:
    path = save({"model": tiny().state_dict(), "epoch": 3}, tmp_path / "w.pt")
    with pytest.raises(ValueError) as error:
        read_state(path, key="ema")
    assert str(error.value) == (
        f"`key`='ema' is not an entry of `path`={str(path)!r}, which holds a dict with keys ['epoch', 'model']; "
        "name the entry that holds the state_dict, or leave `key` unset to look for ['state_dict', 'model', "
        "'model_state_dict', 'net', 'student', 'state', 'weights', 'params']."
    )
    with pytest.raises(ValueError) as error:
        read_state(path, key="epoch")
    assert str(error.value) == (
        f"`key`='epoch' of `path`={str(path)!r} holds no weights: a state_dict of tensors is expected, got an int."
    )


def test_a_file_without_weights_says_what_it_holds_and_which_entry_could_be_named(tmp_path: Path) -> None:
    path = save({"ema_weights": tiny().state_dict(), "epoch": 3}, tmp_path / "w.pt")
    with pytest.raises(ValueError) as error:
        read_state(path)
    assert str(error.value) == (
        f"`path`={str(path)!r} holds no weights: a state_dict of tensors, a Lightning checkpoint or a dict with the "
        "state_dict under one of ['state_dict', 'model', 'model_state_dict', 'net', 'student', 'state', 'weights', "
        "'params'] is expected, got a dict with keys ['ema_weights', 'epoch']; name the entry that holds it with "
        "`key` (one of ['ema_weights'])."
    )


def test_options_that_are_not_names_are_one_sentence(tmp_path: Path) -> None:
    path = save(tiny().state_dict(), tmp_path / "w.pt")
    for options, message in [
        ({"key": ""}, "`key` must be the name of the entry that holds the state_dict, or None, got ''."),
        ({"prefix": 3}, "`prefix` must be a key prefix such as 'module.', '' or None, got 3."),
        ({"role": None}, "`role` must be a submodule name such as 'student' or 'teacher', got None."),
    ]:
        with pytest.raises(ValueError) as error:
            read_state(path, **options)  # type: ignore[arg-type]
        assert str(error.value) == message


@dataclass
class Payload:
    """A pickle that runs a shell command when it is loaded without ``weights_only``."""

    marker: Path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path, writer: str) -> None:
    marker, path = tmp_path / "hacked", tmp_path / "evil.pt"
    dump = pickle.dump if writer == "pickle" else torch.save
    with open(path, "wb") as file:
        dump({"state_dict": Payload(marker)}, file)
    with pytest.raises(ValueError) as error:
        load_weights(tiny(), path, argument="teacher_checkpoint")
    refers = (
        "it is not tensors and plain data written by torch.save"
        if writer == "pickle"
        else f"it refers to {os.system.__module__}.system, which is not a tensor or plain data"
    )
    assert str(error.value) == (
        f"`teacher_checkpoint`={str(path)!r} cannot be read with torch.load(weights_only=True): {refers}, and "
        "kd_probe never runs code from a file (save the network's state_dict() with torch.save instead)."
    )
    with pytest.raises(ValueError, match="kd_probe never runs code from a file"):
        checkpoint_series([path])
    assert not marker.exists()
    with open(path, "rb") as file:  # the test's own check: loaded the unsafe way, the file runs its command
        pickle.load(file) if writer == "pickle" else torch.load(file, weights_only=False)
    assert marker.exists()


def test_a_damaged_file_and_a_missing_file_are_one_sentence(tmp_path: Path) -> None:
    text, empty = tmp_path / "notes.pt", tmp_path / "empty.pt"
    text.write_text("not a checkpoint")
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as error:
        read_state(text)
    assert str(error.value) == (
        f"`path`={str(text)!r} cannot be read with torch.load(weights_only=True): it is not tensors and plain data "
        "written by torch.save, and kd_probe never runs code from a file (save the network's state_dict() with "
        "torch.save instead)."
    )
    with pytest.raises(ValueError) as error:
        read_state(empty)
    assert str(error.value).startswith(  # the rest is torch's reason, in its words
        f"`path`={str(empty)!r} cannot be read with torch.load(weights_only=True): it is not a file written by "
        "torch.save, or it is damaged (EOFError"
    )
    with pytest.raises(FileNotFoundError) as missing:
        read_state(tmp_path / "nowhere.pt", argument="checkpoints")
    assert str(missing.value) == (
        f"`checkpoints`: there is no checkpoint file at {str(tmp_path / 'nowhere.pt')!r} (relative paths are read "
        f"from {os.getcwd()})."
    )


# A series of checkpoints ----------------------------------------------------------------------------------------------


def write(folder: Path, names: list[str], epochs: list[int | None] | None = None) -> list[Path]:
    """A tiny checkpoint per name, as a plain loop writes them (with its own ``epoch`` where given)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, epoch in zip(names, epochs or [None] * len(names), strict=True):
        record: dict[str, object] = {"model": tiny().state_dict()}
        if epoch is not None:
            record["epoch"] = epoch
        paths.append(save(record, folder / name))
    return paths


def test_the_epoch_of_a_file_name() -> None:
    names = {"checkpoint-12.pt": 12, "student_e05.pth": 5, "epoch=3-step=120.ckpt": 3, "seed7_epoch_4.pt": 4}
    names |= {"model-ep9-seed2.bin": 9, "EPOCH-11.pt": 11, "resnet18_lr1e-3_epoch2.pt": 2, "resnet18.pt": 18}
    assert {name: epoch_from_name(name) for name in [*names, "final.pt"]} == {**names, "final.pt": None}


def test_a_glob_reads_epochs_from_the_files_then_their_names_sorted_by_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "run" / "a", ["late.pt", "start.pt"], epochs=[30, 0])  # the file's own `epoch` wins
    write(tmp_path / "run" / "b", ["ep2.pt", "ep10.pt", "epoch_99_but_file_says_5.pt"], epochs=[None, None, 5])
    monkeypatch.chdir(tmp_path)
    assert checkpoint_series("run/**/*.pt") == [
        Checkpoint(0, Path("run/a/start.pt")),
        Checkpoint(2, Path("run/b/ep2.pt")),
        Checkpoint(5, Path("run/b/epoch_99_but_file_says_5.pt")),
        Checkpoint(10, Path("run/b/ep10.pt")),
        Checkpoint(30, Path("run/a/late.pt")),
    ]


def test_given_epochs_follow_the_name_order_of_a_glob_and_the_order_of_a_list(tmp_path: Path) -> None:
    paths = write(tmp_path, ["step_10.pt", "step_2.pt", "init.pt"])
    # name order, numbers as numbers: init.pt, step_2.pt, step_10.pt
    assert checkpoint_series(str(tmp_path / "*.pt"), epochs=[0, 1, 5]) == [
        Checkpoint(0, tmp_path / "init.pt"),
        Checkpoint(1, tmp_path / "step_2.pt"),
        Checkpoint(5, tmp_path / "step_10.pt"),
    ]
    assert checkpoint_series(paths, epochs=[8, 4, 0]) == [
        Checkpoint(0, tmp_path / "init.pt"),
        Checkpoint(4, tmp_path / "step_2.pt"),
        Checkpoint(8, tmp_path / "step_10.pt"),
    ]


def test_a_folder_gives_its_checkpoint_files_directly_inside(tmp_path: Path) -> None:
    write(tmp_path, ["e1.pt", "e2.pth", "e3.ckpt", "e4.bin"])
    write(tmp_path / "deeper", ["e5.pt"])
    (tmp_path / "notes.txt").write_text("epoch 6")
    assert [c.epoch for c in checkpoint_series(tmp_path)] == [1, 2, 3, 4]
    assert [c.path.name for c in checkpoint_series(str(tmp_path))] == ["e1.pt", "e2.pth", "e3.ckpt", "e4.bin"]


def test_nothing_matched_names_the_pattern_and_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        checkpoint_series("runs/*.ckpt")
    assert str(error.value) == (
        f"`checkpoints`='runs/*.ckpt' matched no checkpoint file (the pattern is read from {tmp_path}); give a glob "
        "such as 'checkpoints/*.ckpt', a folder, or a list of files."
    )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError) as error:
        checkpoint_series("empty", argument="probe.checkpoints")
    assert str(error.value) == (
        "`probe.checkpoints`='empty' is a folder without a *.pt, *.pth, *.ckpt or *.bin file directly inside "
        f"(relative paths are read from {tmp_path}); give a glob such as 'empty/**/*.pt' for files further down."
    )
    with pytest.raises(FileNotFoundError) as error:
        checkpoint_series([])
    assert str(error.value) == "`checkpoints` is an empty list; give at least one checkpoint file."
    write(tmp_path, ["e1.pt"])
    with pytest.raises(FileNotFoundError) as error:
        checkpoint_series(["e1.pt", Path("e2.pt")])
    assert str(error.value) == (
        f"`checkpoints[1]`: there is no checkpoint file at 'e2.pt' (relative paths are read from {tmp_path})."
    )
    with pytest.raises(ValueError) as refused:
        checkpoint_series(3)  # type: ignore[arg-type]
    assert str(refused.value) == "`checkpoints` must be a glob pattern, a folder or a list of files, got 3."


def test_epochs_that_cannot_be_read_are_one_sentence(tmp_path: Path) -> None:
    (final,) = write(tmp_path, ["final.pt"])
    with pytest.raises(ValueError) as error:
        checkpoint_series([final])
    assert str(error.value) == (
        f"`checkpoints`: the epoch of {str(final)!r} cannot be read (the file has no integer 'epoch' and its name no "
        "number); give `epochs` with one number per file."
    )
    (negative,) = write(tmp_path, ["odd.pt"], epochs=[-1])
    with pytest.raises(ValueError) as error:
        checkpoint_series([negative])
    assert str(error.value) == (
        f"`checkpoints`: {str(negative)!r} is at epoch -1, but an epoch is the number of epochs trained, 0 or more; "
        "give `epochs` with one number per file."
    )


def test_given_epochs_of_another_length_negative_or_repeated_are_one_sentence(tmp_path: Path) -> None:
    paths = write(tmp_path, ["a.pt", "b.pt"])
    shown = [str(path) for path in paths]
    with pytest.raises(ValueError) as error:
        checkpoint_series(paths, epochs=[1, 2, 3])
    assert str(error.value) == (
        f"`epochs` has 3 number(s) but `checkpoints` gives 2 file(s) {shown}; give one epoch per file, in the "
        "files' order."
    )
    with pytest.raises(ValueError) as error:
        checkpoint_series(paths, epochs=[0, -2])
    assert str(error.value) == "`epochs`=[0, -2] holds -2, but an epoch is the number of epochs trained, 0 or more."
    with pytest.raises(ValueError) as error:
        checkpoint_series(paths, epochs=[1, 1.5])  # type: ignore[list-item]
    assert str(error.value) == "`epochs` must be a list of whole numbers of epochs trained, got [1, 1.5]."
    with pytest.raises(ValueError) as error:
        checkpoint_series(paths, epochs=[3, 3])
    assert str(error.value) == (
        f"`checkpoints`: {shown[0]!r} and {shown[1]!r} are both at epoch 3 by `epochs`; give each file its own epoch."
    )


def test_files_at_the_same_epoch_are_named_both(tmp_path: Path) -> None:
    first, second = write(tmp_path, ["run1_e3.pt", "run2_e3.pt"])
    with pytest.raises(ValueError) as error:
        checkpoint_series(str(tmp_path / "*.pt"))
    assert str(error.value) == (
        f"`checkpoints`: {str(first)!r} and {str(second)!r} are both at epoch 3 by their contents or names; keep one "
        "file per epoch, or give `epochs`."
    )


def test_a_key_is_checked_when_the_epoch_is_read_from_the_file(tmp_path: Path) -> None:
    write(tmp_path, ["e1.pt"], epochs=[1])
    assert checkpoint_series(tmp_path, key="model") == [Checkpoint(1, tmp_path / "e1.pt")]
    with pytest.raises(ValueError, match=r"^`key`='ema' is not an entry of `checkpoints`="):
        checkpoint_series(tmp_path, key="ema")
