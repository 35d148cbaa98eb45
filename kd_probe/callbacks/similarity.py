"""``SimilarityProbe``: how alike the student's and the teacher's representations are, live (methods §7)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from typing_extensions import override

from kd_probe.callbacks._base import BatchProbe
from kd_probe.callbacks._common import (
    network_names,
    networks_by_role,
    probe_fingerprint,
    read_probe_set,
    run_folder,
    save_atomically,
)
from kd_probe.callbacks._guard import seconds_per_pass
from kd_probe.callbacks._probe_sources import ProbeSetReader
from kd_probe.callbacks._sharding import Shards
from kd_probe.callbacks._stages import stage_outputs
from kd_probe.core.layers import capture_outputs, eval_forward, module_device, resolve_layer
from kd_probe.core.render import matrix_picture
from kd_probe.core.similarity import MinibatchCKA, class_correlation_gap
from kd_probe.core.unicam import check_features, feature_vectors
from kd_probe.io.paths import check_name
from kd_probe.io.run_files import FORMAT_VERSION, SIMILARITY_FILE, probe_file
from kd_probe.io.tags import SIMILARITY

__all__ = ["SimilarityProbe"]

SMALLEST_CHUNK = 4  # the unbiased HSIC needs 4 items per batch (methods §7.2)
KEPT = 2**20  # most feature values per layer (items × width) kept with the last probe, for the report's intervals


class SimilarityProbe(ProbeSetReader, BatchProbe):
    """Measure during training how alike the student's layers are to the teacher's: CKA, and the classes' logits.

    On a fixed held-out set, at epoch 0 (before any optimizer step) and every ``every_n_epochs``: the layer ×
    layer matrix of linear CKA between the student's and the teacher's features (minibatch CKA: the unbiased HSIC
    accumulated over chunks of the probe set, so memory stays bounded on large layers; methods §7.2), logged for
    the matched pairs as scalars and whole as a labelled heat map; and the gap between the teacher's and the
    student's class-correlation matrices of logits (methods §7.4: the DKD and CRD papers' figure), its mean
    absolute value off the diagonal as a scalar and the matrix as a heat map. A baseline student is read against
    the same teacher (give it as ``teacher=``). The teacher's side is computed again at each probe (one forward
    per chunk). Under DDP the chunks are shared out over the ranks and their HSIC terms gathered in the chunks'
    order, so every rank computes exactly what one process does; rank zero logs and writes. The models are left
    as they were (methods §4); a failed probe is warned about and recorded as failed; training goes on.

    Args:
        images: ``[N, ...]`` inputs as the models expect them (``N ≥ 4``), a dataset of ``(input, label, ...)``
            items, a data module with a ``probe_set``, ``"datamodule"`` (the Trainer's, read at ``setup``) or the
            path of a file ``torch.save({"images": ...})``.
        student_layers, teacher_layers: the layers compared (the matrix's columns and rows); default: each
            network's stage outputs (the last module before each spatial reduction, and the last feature map:
            ``features.relu2/4/6`` for ``kd_probe.models.VGG``). Pair ``i`` of the two lists is a matched pair; with
            lists of different lengths, student layer ``i`` is matched with the teacher layer at the same relative
            depth.
        features: how a feature map becomes one vector per item: ``"pooled"`` (global average pooling, the
            default) or ``"flattened"`` (the whole map, as the CKA papers do).
        class_gap: also measure the class-correlation gap of the logits (the networks' outputs).
        chunk: items per chunk of the minibatch estimator (default 256; at least 4). The probe set is split into
            equal consecutive chunks of at most this many (a few more where a chunk would otherwise hold fewer
            than 4); a probe set of up to ``chunk`` items is one chunk: the full-data unbiased CKA.
        every_n_epochs, name, teacher, student, log_images: as for :class:`~kd_probe.UniCAMProbe`; ``log_images``
            here switches the two heat maps on or off.

    Logged metrics (``<p>`` = ``5_similarity`` or ``5_similarity/<name>``; step = ``trainer.global_step``):
        - ``<p>/cka/<student layer>`` — linear CKA of a matched pair (its teacher layer in the file).
        - ``<p>/cka_mean`` — the mean over the matched pairs.
        - ``<p>/class_gap`` — mean ``|corr_T − corr_S|`` over the off-diagonal class pairs.
        - ``<p>/cka_matrix``, ``<p>/class_gap_matrix`` (images, TensorBoard).

    Example::

        probe = SimilarityProbe(data, every_n_epochs=2)
        pl.Trainer(max_epochs=10, callbacks=[probe]).fit(DistillationModule(student, teacher), data)
    """

    description = "similarity probe"
    group = SIMILARITY
    media = "the CKA and class-gap heat maps are"

    def __init__(
        self,
        images: Any,
        labels: Tensor | None = None,
        *,
        student_layers: Sequence[str] | None = None,
        teacher_layers: Sequence[str] | None = None,
        features: str = "pooled",
        class_gap: bool = True,
        chunk: int = 256,
        every_n_epochs: int = 1,
        name: str | None = None,
        teacher: str | nn.Module = "teacher",
        student: str | nn.Module = "student",
        log_images: bool = True,
    ) -> None:
        for argument, value in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
            if value is not None and (
                isinstance(value, str) or not value or not all(isinstance(v, str) and v for v in value)
            ):
                raise ValueError(f"`{argument}` must be None or a non-empty list of layer names, got {value!r}.")
        check_features(features)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < SMALLEST_CHUNK:
            raise ValueError(f"`chunk` must be an integer ≥ {SMALLEST_CHUNK} (items per chunk), got {chunk!r}.")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an integer ≥ 1, got {every_n_epochs!r}.")
        for argument, flag in (("class_gap", class_gap), ("log_images", log_images)):
            if not isinstance(flag, bool):
                raise ValueError(f"`{argument}` must be True or False, got {flag!r}.")
        self.student_layers = None if student_layers is None else list(student_layers)
        self.teacher_layers = None if teacher_layers is None else list(teacher_layers)
        self.features, self.class_gap, self.chunk = features, class_gap, chunk
        self.every_n_epochs, self.name = every_n_epochs, None if name is None else check_name(name)
        self.teacher, self.student, self.log_images = teacher, student, log_images
        self.history: list[dict[str, Any]] = []
        self.items: dict[str, Any] | None = None  # the last successful probe's per-item features and logits
        self._start_guards()
        self._take_probe_set(images, labels=labels)

    def _read_probe_set(self, source: Any, labels: Tensor | None = None) -> None:
        self.images, _, self.labels = read_probe_set(
            source, None, labels, need_masks=False, need_labels=False, owner="SimilarityProbe"
        )
        if self.images.shape[0] < SMALLEST_CHUNK:
            raise ValueError(
                f"`images` holds {self.images.shape[0]} probe items; the unbiased HSIC behind CKA needs at least "
                f"{SMALLEST_CHUNK} (methods §7.2)."
            )

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, similarity=True)

    @override
    def check_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        example = self.images[:1]
        for network, argument in ((student, "student_layers"), (teacher, "teacher_layers")):
            given = getattr(self, argument)
            if given is None:
                setattr(self, argument, stage_outputs(network, example.to(module_device(network)), argument))
            else:
                for layer in given:
                    resolve_layer(network, layer, argument=argument)
        self._features(student, self.student_layers or [], example.to(module_device(student)))  # they run

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The matched ``(student layer, teacher layer)`` pairs: by position, or by relative depth."""
        own, theirs = self.student_layers or [], self.teacher_layers or []
        if len(own) == len(theirs) or not own or not theirs:
            return list(zip(own, theirs, strict=False))
        last = max(len(own) - 1, 1)
        return [(layer, theirs[round(i * (len(theirs) - 1) / last)]) for i, layer in enumerate(own)]

    def _chunks(self) -> list[slice]:
        """Equal consecutive chunks of at most ``chunk`` items — a little more where that would leave a chunk of
        fewer than 4 — in the probe set's order."""
        count = self.images.shape[0]
        parts = max(1, min(math.ceil(count / self.chunk), count // SMALLEST_CHUNK))
        bounds = [round(i * count / parts) for i in range(parts + 1)]
        return [slice(a, b) for a, b in pairwise(bounds)]

    def _features(self, network: nn.Module, layers: list[str], inputs: Tensor) -> tuple[list[Tensor], Tensor]:
        """The named layers' feature vectors and the network's output (the logits) for ``inputs``, on the host."""
        with capture_outputs(network, layers) as outputs:
            logits = eval_forward(network, inputs)
        vectors = [feature_vectors(outputs[layer], self.features).double().cpu() for layer in layers]
        if not isinstance(logits, Tensor):
            raise ValueError(f"{type(network).__name__} returns {type(logits).__name__}; logits (a tensor) are needed.")
        return vectors, logits.detach().double().cpu()

    @override
    def estimate_cost(self, pl_module: pl.LightningModule) -> tuple[float, str]:
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        sample = self.images[: min(4, self.images.shape[0])]
        seconds = sum(
            seconds_per_pass(network, sample.to(module_device(network)), backward=False)
            for network in (student, teacher)
        )
        count = self.images.shape[0]
        return count / sample.shape[0] * seconds, f"{count} items: a forward of each network"

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> tuple[dict[str, Any], Any]:
        """The CKA matrix and the class-correlation gap now. Under DDP each rank computes its chunks' HSIC terms
        and logits; every rank gathers them in the chunks' order."""
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        chunks = self._chunks()
        shards = Shards(trainer, len(chunks), module_device(student, pl_module.device))
        own, theirs = self.student_layers or [], self.teacher_layers or []

        pairs = [(own.index(s), theirs.index(t)) for s, t in self.pairs]

        def local() -> dict[str, Tensor]:
            terms, student_logits, teacher_logits = [], [], []
            kept: dict[str, list[Tensor]] = {}
            for index in shards.work:
                inputs = self.images[chunks[index]]
                xs, logits_s = self._features(student, own, inputs.to(module_device(student)))
                ys, logits_t = self._features(teacher, theirs, inputs.to(module_device(teacher)))
                accumulator = MinibatchCKA()
                accumulator.update(xs, ys)
                terms.append(accumulator.sums)  # this chunk's HSIC terms (methods §7.2)
                student_logits.append(logits_s)
                teacher_logits.append(logits_t)
                for number, (i, j) in enumerate(pairs):  # the matched pairs' features, when small enough
                    if self.images.shape[0] * max(xs[i].shape[1], ys[j].shape[1]) <= KEPT:
                        kept.setdefault(f"x{number}", []).append(xs[i])
                        kept.setdefault(f"y{number}", []).append(ys[j])
            rows = max(part.stop - part.start for part in chunks)  # the same on every rank: gathers need one shape
            return {
                "terms": torch.stack(terms),
                "student": _padded(student_logits, rows),
                "teacher": _padded(teacher_logits, rows),
                **{key: _padded(parts, rows) for key, parts in kept.items()},
            }

        found = shards.compute(local)
        terms = shards.gather(found["terms"].to(shards.device)).cpu()  # [chunks, ...] in the chunks' order
        accumulator = MinibatchCKA()
        accumulator.sums = terms.sum(dim=0)  # the chunks' terms added in their order: the same on every rank
        matrix = accumulator.compute()  # [student layers, teacher layers]
        if not bool(torch.isfinite(matrix).all()):
            raise FloatingPointError("the CKA matrix holds NaN or infinite values (has the model diverged?)")
        values: dict[str, float] = {}
        index = {layer: i for i, layer in enumerate(own)}, {layer: j for j, layer in enumerate(theirs)}
        for s, t in self.pairs:
            values[f"cka/{s}"] = float(matrix[index[0][s], index[1][t]])
        values["cka_mean"] = sum(values.values()) / max(len(self.pairs), 1)
        entry: dict[str, Any] = {"epoch": epoch, "global_step": trainer.global_step, **values}
        entry["cka"] = matrix.float()
        shown: dict[str, Any] = {"cka": matrix}
        whole = {
            key: _unpadded(shards.gather(value.to(shards.device)).cpu(), chunks)
            for key, value in found.items()
            if key != "terms" and (self.class_gap or key[0] in "xy")
        }
        kept = {
            s: (whole[f"x{n}"].float(), whole[f"y{n}"].float())
            for n, (s, _) in enumerate(self.pairs)
            if f"x{n}" in whole
        }
        self.items = {  # the last probe's per-item data, for the report's intervals (methods §7.2)
            "epoch": epoch,
            "pairs": kept,
            "logits": {role: whole[role].float() for role in ("student", "teacher") if role in whole},
        }
        if self.class_gap:
            gap = class_correlation_gap(whole["teacher"], whole["student"])
            off = gap[~torch.eye(gap.shape[0], dtype=torch.bool)]  # a class whose logit never varies: NaN, left out
            entry["class_gap"] = float(off.abs().nanmean()) if bool(torch.isfinite(off).any()) else math.nan
            entry["class_gap_matrix"] = gap.float()
            shown["class_gap"] = gap
        return entry, shown

    media_what = "writing the heat maps to TensorBoard"

    @override
    def save_file(self, trainer: pl.Trainer, entry: dict[str, Any]) -> None:
        self.side_effects.run(entry, f"saving {self.file_path(trainer).name}", self._save, trainer)

    @override
    def write_media(self, logger: TensorBoardLogger, shown: Any, step: int) -> None:
        self._write_maps(logger, shown, step)

    def _write_maps(self, logger: TensorBoardLogger, shown: dict[str, Tensor], step: int) -> None:
        own, theirs = self.student_layers or [], self.teacher_layers or []
        what = "linear CKA (rows: teacher, columns: student)"
        cka = matrix_picture(shown["cka"].T, theirs, own, low=0.0, high=1.0, key_title=what)
        logger.experiment.add_image(f"{self.prefix}/cka_matrix", cka, step)
        if "class_gap" in shown:
            classes = [str(c) for c in range(shown["class_gap"].shape[0])]
            what = "corr T - corr S per class pair"
            gap = matrix_picture(shown["class_gap"], classes, classes, low=-1.0, high=1.0, key_title=what)
            logger.experiment.add_image(f"{self.prefix}/class_gap_matrix", gap, step)

    def file_path(self, trainer: pl.Trainer) -> Path:
        """``kd_probe_similarity[_<name>].pt`` in the logger's folder (else the Trainer's root directory)."""
        return run_folder(trainer) / probe_file(SIMILARITY_FILE, self.name)

    def _save(self, trainer: pl.Trainer) -> None:
        record = {
            "version": FORMAT_VERSION[SIMILARITY_FILE],
            "settings": self.recorded_settings(),
            "student_layers": self.student_layers,
            "teacher_layers": self.teacher_layers,
            "pairs": [list(pair) for pair in self.pairs],
            "features": self.features,
            "images": int(self.images.shape[0]),
            "entries": self.history,
            "items": self.items,
        }
        save_atomically(record, self.file_path(trainer))

    @override
    def recorded_settings(self) -> dict[str, Any]:
        return {
            "probe_set": probe_fingerprint(self.images, self.labels),
            "student_layers": self.student_layers,
            "teacher_layers": self.teacher_layers,
            "networks": network_names(self.teacher, self.student, None),
            "features": self.features,
            "chunk": self.chunk,
            "class_gap": self.class_gap,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "items": self.items, "settings": self._settings_now()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_resume(state_dict)
        self.history = list(state_dict.get("history", []))
        self.items = state_dict.get("items")


def _padded(parts: list[Tensor], rows: int) -> Tensor:
    """Per-chunk logits ``[r, C]`` (``r ≤ rows``) stacked as ``[chunks, rows, C]`` (NaN padding)."""
    out = torch.full((len(parts), rows, parts[0].shape[1]), math.nan, dtype=parts[0].dtype)
    for i, part in enumerate(parts):
        out[i, : part.shape[0]] = part
    return out


def _unpadded(stacked: Tensor, chunks: list[slice]) -> Tensor:
    """The logits of every item, in order, from :func:`_padded` chunks."""
    return torch.cat([stacked[i, : chunk.stop - chunk.start] for i, chunk in enumerate(chunks)])
