"""Weights of a network from a file: a plain ``state_dict``, a dict holding one under a common key, or a Lightning
checkpoint, with a wrapper's key prefix stripped (pure torch; ``torch.load(weights_only=True)`` only, so a file
never runs code)."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["load_weights", "read_state"]

STATE_KEYS = ("state_dict", "model", "model_state_dict", "net", "student", "state", "weights", "params")
"""The entries of a checkpoint dict that may hold the state_dict, in the order they are tried."""

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes that wrappers add (DataParallel and DDP, ``torch.compile``), stripped when every key carries one."""

_LIGHTNING = "pytorch-lightning_version"  # the key that marks a Lightning checkpoint


def load_weights(
    network: nn.Module,
    path: str | os.PathLike[str],
    *,
    argument: str = "path",
    key: str | None = None,
    prefix: str | None = None,
    role: str = "student",
) -> nn.Module:
    """Load ``network``'s weights from ``path`` in place and return it.

    The file is read by :func:`read_state`: a plain ``network.state_dict()`` saved with ``torch.save``, a dict
    holding it under a common key (``state_dict``, ``model``, ``net``, ``student``, ...), or a Lightning
    checkpoint — of a ``DistillationModule``, whose student's weights (keys ``student.*``) are taken, so a teacher
    trained with ``kd-probe fit`` is reused by naming its checkpoint. Every key and shape must match the
    network's; a mistake is one sentence naming ``argument`` and the path.

    Args:
        network: the network, built with the architecture the file was written with.
        path: the file.
        argument: the name of the setting that gave ``path``, for the error messages.
        key: the entry of the file's dict that holds the state_dict (``None``: found automatically).
        prefix: a key prefix to strip, e.g. ``"module."`` (``None``: ``"module."`` and ``"_orig_mod."`` when every
            key carries them; ``""``: strip nothing).
        role: the submodule of a Lightning module whose keys are taken when the file has any, e.g. ``"teacher"``.

    Returns:
        ``network``, with the file's weights.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file cannot be read with ``weights_only=True``, holds no weights, or holds weights of
            another architecture (the first differences are named).

    Example::

        teacher = load_weights(VGG(6, widths=(32, 64, 128)), "runs/examples/checkpoints/teacher.ckpt")
        student = load_weights(VGG(6), "my_loop/epoch_10.pt", key="model", prefix="module.")
    """
    network.load_state_dict(fitting_state(network, path, argument=argument, key=key, prefix=prefix, role=role))
    return network


def fitting_state(
    network: nn.Module,
    path: str | os.PathLike[str],
    *,
    argument: str = "path",
    key: str | None = None,
    prefix: str | None = None,
    role: str = "student",
) -> dict[str, Tensor]:
    """The state dict of ``path`` (:func:`read_state`) after checking that every key and shape fits
    ``network``, without loading it: a ``ValueError`` naming the missing and unexpected keys otherwise. Cheap
    for a file in torch's zip format (memory-mapped: only the names and shapes are read), so a series of
    checkpoints can be checked before any is used."""
    state, _ = read_state(path, argument=argument, key=key, prefix=prefix, role=role)
    problems = _differences(network.state_dict(), state)
    if problems:
        raise ValueError(
            f"`{argument}`={os.fspath(path)!r} does not hold the weights of this {type(network).__name__}: "
            f"{problems}; build the network with the class and arguments of the run that wrote the file"
            f"{_prefix_hint(network.state_dict(), state)}."
        )
    return state


def read_state(
    path: str | os.PathLike[str],
    *,
    argument: str = "path",
    key: str | None = None,
    prefix: str | None = None,
    role: str = "student",
) -> tuple[dict[str, Tensor], dict[str, object]]:
    """The network's state dict in the file at ``path`` and the file's small metadata.

    The state dict is found in this order:

    1. the entry ``key`` of the file's dict when it is given; else the file itself when it is a mapping of tensors;
       else the first of its entries ``state_dict`` (a Lightning checkpoint's), ``model``, ``model_state_dict``,
       ``net``, ``student``, ``state``, ``weights`` and ``params`` that is one;
    2. of its keys, those under ``<role>.`` when there are any (the student of a ``DistillationModule``
       checkpoint), with ``<role>.`` removed; else all;
    3. ``prefix`` removed from every key; with ``prefix=None``, ``"module."`` (DataParallel, DDP) and
       ``"_orig_mod."`` (``torch.compile``) are removed when every key carries them, and nothing otherwise.

    The metadata holds ``trained_epochs`` when the file is a dict with an integer ``epoch``: the number of epochs
    of training behind the weights. A Lightning checkpoint stores the 0-based index of the epoch during which it
    was saved, so it is ``epoch + 1`` (the epochs its fit loop started, which is ``epoch`` for a checkpoint saved
    after ``Trainer.fit`` returned); another dict's ``epoch`` is taken as it is (epochs trained). It also holds
    ``global_step`` when the file has an integer one.

    Args:
        path: the file, read with ``torch.load(map_location="cpu", weights_only=True)``.
        argument: the name of the setting that gave ``path``, for the error messages.
        key: the entry of the file's dict that holds the state_dict (``None``: found automatically).
        prefix: a key prefix to strip (``None``: the wrappers' prefixes when every key carries them; ``""``: none).
        role: the submodule whose keys are taken when the file has any.

    Returns:
        The state dict (keys as the network names them) and the metadata (``trained_epochs`` and ``global_step``
        where the file has them).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file cannot be read with ``weights_only=True``, holds no weights, has no entry ``key``, or
            has a key without ``prefix``.

    Example::

        state, metadata = read_state("lightning_logs/version_0/checkpoints/epoch=4-step=400.ckpt")
        metadata["trained_epochs"]  # 5
    """
    _check_options(key, prefix, role)
    shown = os.fspath(path)
    record = _load(shown, argument)
    state = _select_role(_find_state(record, shown, argument, key), role)
    return _strip_prefix(state, shown, argument, prefix), _metadata(record)


def _check_options(key: object, prefix: object, role: object) -> None:
    """One sentence for a ``key``, ``prefix`` or ``role`` that is not a name."""
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"`key` must be the name of the entry that holds the state_dict, or None, got {key!r}.")
    if prefix is not None and not isinstance(prefix, str):
        raise ValueError(f"`prefix` must be a key prefix such as 'module.', '' or None, got {prefix!r}.")
    if not isinstance(role, str) or not role:
        raise ValueError(f"`role` must be a submodule name such as 'student' or 'teacher', got {role!r}.")


def _load(shown: str, argument: str) -> object:
    """The file's record, read as tensors and plain data only (memory-mapped when torch's zip format allows)."""
    if not Path(shown).is_file():
        raise FileNotFoundError(
            f"`{argument}`: there is no checkpoint file at {shown!r} (relative paths are read from {os.getcwd()})."
        )
    try:
        return torch.load(shown, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(shown))
    except Exception as error:
        raise ValueError(
            f"`{argument}`={shown!r} cannot be read with torch.load(weights_only=True): {_refusal(error)}."
        ) from error


def _refusal(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in words (no full stop)."""
    text = str(error).strip()
    if isinstance(error, pickle.UnpicklingError) and "weights only" in text.lower():
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = (
            f"it refers to {found.group(1)}, which is not a tensor or plain data"
            if found
            else "it is not tensors and plain data written by torch.save"
        )
        return f"{what}, and kd_probe never runs code from a file (save the network's state_dict() with torch.save instead)"
    reason = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    return f"it is not a file written by torch.save, or it is damaged ({reason.rstrip('.')})"


def _is_state(value: object) -> bool:
    return isinstance(value, Mapping) and bool(value) and all(isinstance(v, Tensor) for v in value.values())


def _find_state(record: object, shown: str, argument: str, key: str | None) -> dict[str, Tensor]:
    """The state dict of the record: its entry ``key``, the record itself, or its first entry of ``STATE_KEYS``."""
    if key is not None:
        if not isinstance(record, Mapping) or key not in record:
            raise ValueError(
                f"`key`={key!r} is not an entry of `{argument}`={shown!r}, which holds {_describe(record, 20)}; "
                f"name the entry that holds the state_dict, or leave `key` unset to look for {list(STATE_KEYS)}."
            )
        found = record[key]
        if not _is_state(found):
            raise ValueError(
                f"`key`={key!r} of `{argument}`={shown!r} holds no weights: a state_dict of tensors is expected, got "
                f"{_describe(found)}."
            )
    elif _is_state(record):
        found = record
    else:
        entries: Mapping[object, object] = record if isinstance(record, Mapping) else {}
        found = next((entries[name] for name in STATE_KEYS if _is_state(entries.get(name))), None)
        if found is None:
            nested = sorted(str(name) for name, value in entries.items() if isinstance(value, Mapping))
            advice = f"; name the entry that holds it with `key` (one of {nested[:8]})" if nested else ""
            raise ValueError(
                f"`{argument}`={shown!r} holds no weights: a state_dict of tensors, a Lightning checkpoint or a dict "
                f"with the state_dict under one of {list(STATE_KEYS)} is expected, got {_describe(record)}{advice}."
            )
    assert isinstance(found, Mapping)
    return {str(name): value for name, value in found.items()}


def _select_role(state: dict[str, Tensor], role: str) -> dict[str, Tensor]:
    """The keys under ``<role>.`` with that removed, when there are any; else all of them."""
    start = f"{role}."
    selected = {name[len(start) :]: value for name, value in state.items() if name.startswith(start)}
    return selected or state


def _strip_prefix(state: dict[str, Tensor], shown: str, argument: str, prefix: str | None) -> dict[str, Tensor]:
    """``prefix`` removed from every key (one sentence when a key lacks it); with ``None``, the wrappers'
    prefixes that every key carries, in turn."""
    if prefix is None:
        while True:
            shared = next((p for p in WRAPPER_PREFIXES if all(name.startswith(p) for name in state)), None)
            if shared is None:
                return state
            state = {name[len(shared) :]: value for name, value in state.items()}
    lacking = [name for name in state if not name.startswith(prefix)]
    if lacking:
        raise ValueError(
            f"`prefix`={prefix!r} does not start every key of `{argument}`={shown!r}: {len(lacking)} of "
            f"{len(state)} key(s) lack it, e.g. {lacking[:3]}; give the prefix that every key shares, or leave "
            "`prefix` unset to strip 'module.' and '_orig_mod.' where every key has them."
        )
    return {name[len(prefix) :]: value for name, value in state.items()}


def _metadata(record: object) -> dict[str, object]:
    """``trained_epochs`` and ``global_step`` of a checkpoint dict, where it has them (see :func:`read_state`)."""
    if not isinstance(record, Mapping):
        return {}
    metadata: dict[str, object] = {}
    epoch = _integer(record.get("epoch"))
    if epoch is not None:
        metadata["trained_epochs"] = _lightning_epochs(record, epoch) if _LIGHTNING in record else epoch
    step = _integer(record.get("global_step"))
    if step is not None:
        metadata["global_step"] = step
    return metadata


def _lightning_epochs(record: Mapping[object, object], epoch: int) -> int:
    """Epochs behind a Lightning checkpoint's weights: the epochs its fit loop started (``epoch + 1`` while
    training, ``epoch`` once ``Trainer.fit`` returned); ``epoch + 1`` when the loop's progress is not recorded."""
    progress: object = record.get("loops")
    for name in ("fit_loop", "epoch_progress", "current", "started"):
        progress = progress.get(name) if isinstance(progress, Mapping) else None
    started = _integer(progress)
    return started if started in (epoch, epoch + 1) else epoch + 1


def _integer(value: object) -> int | None:
    """``value`` as an ``int`` when it is one (or a one-element integer tensor), else ``None``."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point() and not value.is_complex():
        value = int(value.item())
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _differences(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str:
    """The first differences of keys and shapes, in words ("" when the state dicts fit)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [
        f"{key!r} is {tuple(found[key].shape)} in the file but {tuple(expected[key].shape)} here"
        for key in expected
        if key in found and found[key].shape != expected[key].shape
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) missing, e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
    if reshaped:
        parts.append(f"{len(reshaped)} of another shape, e.g. {reshaped[0]}")
    return "; ".join(parts)


def _prefix_hint(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> str:
    """When stripping the first name part that every key of the file shares would make the keys fit, say so."""
    heads = {name.split(".", 1)[0] for name in found}
    if len(heads) != 1 or not all("." in name for name in found):
        return ""
    shared = f"{heads.pop()}."
    if {name[len(shared) :] for name in found} != set(expected):
        return ""
    return f" (every key in the file starts with {shared!r}: give `prefix`={shared!r})"


def _describe(record: object, shown: int = 8) -> str:
    if isinstance(record, Mapping):
        names = sorted(map(str, record))
        more = f" ({len(names)} in all)" if len(names) > shown else ""
        return f"a dict with keys {names[:shown]}{more}"
    name = type(record).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"
