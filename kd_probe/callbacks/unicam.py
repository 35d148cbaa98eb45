"""``UniCAMProbe``: feature similarity (FSS), relevance (RS) and UniCAM maps during training ([UC], methods §3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from typing_extensions import override

from kd_probe.callbacks import _streaming
from kd_probe.callbacks._base import BatchProbe
from kd_probe.callbacks._checks import (
    check_normalization,
    check_prefix_tokens,
    check_unicam_options,
    check_unicam_setup,
)
from kd_probe.callbacks._common import (
    network_names,
    networks_by_role,
    probe_fingerprint,
    probe_normalization,
    probe_pictures,
    read_probe_set,
    run_folder,
    save_atomically,
)
from kd_probe.callbacks._guard import seconds_per_pass
from kd_probe.callbacks._probe_sources import ProbeSetReader
from kd_probe.callbacks._sharding import Shards
from kd_probe.callbacks._unicam_scores import distance_matrices, similarity_and_relevance, unicam_maps
from kd_probe.core.distance_correlation import (
    correlation_of_distances,
    distance_matrix,
    label_embedding,
)
from kd_probe.core.layers import capture_outputs, eval_forward, module_device
from kd_probe.core.render import map_rows
from kd_probe.core.unicam import UniCAM, UniCAMPass, check_features, feature_vectors
from kd_probe.io.paths import check_name
from kd_probe.io.run_files import FORMAT_VERSION, UNICAM_FILE, probe_file
from kd_probe.io.tags import UNICAM

__all__ = ["UniCAMProbe"]

MAPS_KEPT = 8  # images whose maps are kept per probe in the state and the file (for reports)


def _pairs(layers: Any) -> list[tuple[str, str]]:
    """``layers`` as ``(student layer, teacher layer)`` pairs; a plain name stands for the same name in both."""
    if isinstance(layers, str):
        layers = [layers]
    pairs = []
    for item in layers if isinstance(layers, Sequence) else []:
        if isinstance(item, str):
            item = (item, item)
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(n, str) and n for n in item)):
            raise ValueError(
                f"`layers` items must be layer names or (student layer, teacher layer) pairs, got {item!r}."
            )
        pairs.append((item[0], item[1]))
    if not pairs:
        raise ValueError(f"`layers` must name at least one (student layer, teacher layer) pair, got {layers!r}.")
    return pairs


class UniCAMProbe(ProbeSetReader, BatchProbe):
    """Measure during training how much of the teacher's label-relevant knowledge the student holds ([UC]).

    On a fixed held-out batch, at epoch 0 (before any optimizer step) and every ``every_n_epochs``, for each
    ``(student layer, teacher layer)`` pair (feature maps globally average-pooled, or flattened: ``features``):
    the feature similarity ``FSS = R*(F_T, F_S)`` (bias-corrected squared distance correlation; also the
    V-statistic), the relevance ``RS = R*(F, G)`` of teacher, student and reference to the labels ``G``, the
    *distilled* relevance ``R*(F_S | F_T, G)`` (what the student holds beyond the teacher that is about the
    labels; beyond the reference when one is given) and the *residual* relevance ``R*(F_T | F_S, G)`` (what the
    teacher — or the reference — holds that the student lacks); and UniCAM maps of both at ``cam_layer``.
    Teacher- and reference-side features are computed once and cached. Under DDP the images are shared out over
    the ranks (rank ``r`` of ``w`` takes images ``r, r + w, …``): each rank computes its images' features and
    UniCAM maps; the features are gathered, so that every rank computes the distance matrices, FSS, RS and the
    UniCAM scores of the whole batch, exactly as one process does, and the maps are gathered in the images'
    order; rank zero logs and writes. The models are left as they were (methods §4). A failed probe (e.g. NaN or
    infinite features or maps of a diverged student; under DDP, a failure on any rank fails it on every rank) is
    warned about and recorded as failed with the reason, never as numbers; a logger, an image grid or the file
    that fails is warned about once and noted in the entry's ``problems``; training goes on. At the start of fit
    a dry run logs what a probe is expected to cost, and after the first epoch which share of a training epoch
    that is (a warning when it is more than the epoch).

    Args:
        images: ``[N, C, H, W]`` inputs (normalised as the models expect; ``N ≥ 4``, two classes or more), a
            dataset of ``(image, label, ...)`` items, a data module with a ``probe_set``, ``"datamodule"`` (the
            Trainer's, read at ``setup``) or the path of a file ``torch.save({"images": ..., "labels": ...})``.
            Distance correlations are batch statistics: a few dozen images give steadier curves than a handful.
        labels: ``[N]`` classes when ``images`` is a tensor.
        layers: ``(student layer, teacher layer)`` pairs (a plain name means the same name in both); the
            student's name labels the tags. The reference uses the student's names.
        cam_layer: the convolutional layer of the UniCAM maps: one name for both models, or a
            ``(student layer, teacher layer)`` pair.
        reference: an independently trained model with the student's layer names (e.g. the baseline); then
            distilled and residual are taken against it, as in the paper.
        label_embeddings: ``[num_classes, d]`` label vectors for ``G`` (default one-hot).
        every_n_epochs: how often to probe.
        name: sub-prefix of the tags and suffix of the file, one safe path component (letters, digits, ``_``,
            ``-``, ``.``).
        teacher, student: attribute names in the LightningModule, or the modules themselves.
        objective: UniCAM's score, ``"relevance"`` or ``"max_row"`` (the authors' scripts).
        normalization: ``(mean, std)`` per channel, to show the inputs (default: the data module's).
        log_images: images in each map grid (any number of channels: one is shown as grey, extras dropped).
        max_batch: most images per forward and backward pass (``None``: 256); the probe images stay on the host
            and visit the networks' device this many at a time, so a probe set of thousands never sits on the
            device whole. The values do not depend on it.
        prefix_tokens: for a ``cam_layer`` that outputs transformer tokens ``[N, T, D]`` (a ViT block), the
            leading tokens that are not patches (``None``: infer a class token or none); feature maps ignore it.
        features: how a 4-D feature map becomes one vector per image, for FSS, RS and the UniCAM scores:
            ``"pooled"`` (global average pooling; the default: comparable across layers of different sizes, and
            cheap) or ``"flattened"`` (the whole map, as the [UC] authors do for intermediate layers:
            paper-comparable). Other outputs are flattened either way.
        normalize_rows: scale each image's feature vector to unit L2 norm before the V-statistic FSS
            (``fss_v`` only), as the authors' scripts do: ``True`` reproduces their value.

    Logged metrics (``<p>`` = ``4_unicam`` or ``4_unicam/<name>``; ``<layer>`` = the student layer; step =
    ``trainer.global_step``): ``<p>/fss/<layer>``, ``<p>/fss_v/<layer>`` (V-statistic),
    ``<p>/rs/{teacher,student}/<layer>``, ``<p>/rs/reference/<layer>`` (with reference),
    ``<p>/rs/distilled/<layer>``, ``<p>/rs/residual/<layer>``, and the image grids ``<p>/distilled``
    and ``<p>/residual`` (a row per image; columns, named in a strip on top: input, the map), and with a ``TensorBoardLogger`` the run's Custom Scalars
    layout and HParams (:class:`ProbeCallback`). The history (every value, and the maps of the first
    images) is kept in the checkpoint and in ``kd_probe_unicam[_<name>].pt`` in the logger's folder.

    The file (``torch.load(path, weights_only=True)``) holds ``entries`` (the history), ``maps``, ``images``
    and ``labels`` (the first images), the settings (``layers``, ``cam_layer``, ``reference``, ``objective``,
    ``features``, ``normalize_rows``) and, like the checkpoint, ``distances``: the float64 distance matrices
    ``[N, N]`` of the latest successful probe (``None`` before one), from which every score of that entry
    is recomputed, e.g. over resampled images (``m[idx][:, idx]``) for bootstrap intervals::

        {"epoch": int, "labels": distances of the label vectors G,
         "layers": {student layer: {"teacher", "student", "reference" (with a reference),
                                    "teacher_rows", "student_rows" (with normalize_rows): distances}}}

    ``fss/<layer>`` is ``correlation_of_distances(teacher, student)``, ``fss_v/<layer>`` the same with
    ``bias_corrected=False`` on the ``*_rows`` matrices when present, ``rs/<model>/<layer>``
    ``correlation_of_distances(<model>, labels)``, ``rs/distilled/<layer>``
    ``relevance_given_of_distances(student, given, labels)`` and ``rs/residual/<layer>``
    ``relevance_given_of_distances(given, student, labels)``, with ``given`` the reference when present, else
    the teacher (:mod:`kd_probe.core.distance_correlation`).

    Example::

        probe = UniCAMProbe(images, labels, layers=[("features.relu4", "features.relu4"),
                            ("features.relu6", "features.relu6")], cam_layer="features.relu6")
        pl.Trainer(max_epochs=10, callbacks=[probe]).fit(DistillationModule(student, teacher), data)
    """

    description = "UniCAM probe"
    group = UNICAM
    media = "the UniCAM map grids are"  # logged to TensorBoard only (ProbeCallback warns once without one)

    def __init__(
        self,
        images: Any,
        labels: Tensor | None = None,
        *,
        layers: Sequence[tuple[str, str] | str],
        cam_layer: str | tuple[str, str],
        reference: nn.Module | None = None,
        label_embeddings: Tensor | None = None,
        every_n_epochs: int = 1,
        name: str | None = None,
        teacher: str | nn.Module = "teacher",
        student: str | nn.Module = "student",
        objective: str = "relevance",
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        log_images: int = 4,
        max_batch: int | None = None,
        prefix_tokens: int | None = None,
        features: str = "pooled",
        normalize_rows: bool = False,
    ) -> None:
        self.pairs = _pairs(layers)
        cam: tuple = (cam_layer, cam_layer) if isinstance(cam_layer, str) else (cam_layer,)
        cam = tuple(cam_layer) if isinstance(cam_layer, (tuple, list)) else cam
        if len(cam) != 2 or not all(isinstance(n, str) and n for n in cam):
            raise ValueError(f"`cam_layer` must be a layer name or a (student, teacher) pair, got {cam_layer!r}.")
        self.cam_layer: tuple[str, str] = (cam[0], cam[1])
        check_unicam_options(every_n_epochs, objective, log_images, reference, max_batch, normalize_rows)
        check_features(features)
        self.features, self.normalize_rows = features, normalize_rows
        self.name = None if name is None else check_name(name)
        self.reference, self.every_n_epochs, self.objective = reference, every_n_epochs, objective
        self.max_batch = max_batch
        check_prefix_tokens(prefix_tokens)
        self.prefix_tokens = prefix_tokens
        self.teacher, self.student, self.log_images = teacher, student, log_images
        self.history: list[dict[str, Any]] = []
        self.maps: list[dict[str, Any]] = []
        self.distances: dict[str, Any] | None = None  # of the latest successful probe (class docstring)
        self._cache: dict[str, Any] | None = None
        self._start_guards()
        self._take_probe_set(images, labels=labels, label_embeddings=label_embeddings, normalization=normalization)

    def _read_probe_set(
        self,
        source: Any,
        labels: Tensor | None = None,
        label_embeddings: Tensor | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        self.images, _, probe_labels = read_probe_set(
            source, None, labels, need_masks=False, need_labels=True, owner="UniCAMProbe"
        )
        assert probe_labels is not None  # read_probe_set requires labels here
        self.labels = probe_labels
        if self.images.shape[0] < 4:
            raise ValueError(
                f"`images` holds {self.images.shape[0]} probe images; FSS, RS and UniCAM use the bias-corrected "
                "distance correlation, which needs at least 4."
            )
        if int(self.labels.unique().numel()) < 2:
            raise ValueError(
                f"`labels` hold a single class ({int(self.labels[0])}); RS (relevance to the labels) is undefined "
                "with one class: the probe batch needs at least two."
            )
        self.targets = label_embedding(self.labels, label_embeddings)
        check_normalization(normalization, self.images.shape[1])
        self.mean, self.std = probe_normalization(source, normalization, self.images.shape[1])

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, cam_layer=self.cam_layer, unicam=True)

    def _networks(self, pl_module: pl.LightningModule) -> tuple[nn.Module, nn.Module, nn.Module]:
        """Student, teacher and the model the student is compared with (the reference, else the teacher)."""
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        return student, teacher, self.reference if self.reference is not None else teacher

    @override
    def check_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        student, teacher, _ = self._networks(pl_module)
        own, teachers, alone = [s for s, _ in self.pairs], [t for _, t in self.pairs], self.reference is None
        sides = [
            ("student", student, own, self.cam_layer[0], True),
            ("teacher", teacher, teachers, self.cam_layer[1], alone),
        ]
        if self.reference is not None:  # the reference has the student's layer names
            sides.append(("reference", self.reference, own, self.cam_layer[0], True))
        check_unicam_setup(sides, self.images, self.prefix_tokens)

    @property
    def _other_cam(self) -> str:
        """The CAM layer of the model compared with: the reference shares the student's names."""
        return self.cam_layer[0] if self.reference is not None else self.cam_layer[1]

    def _fixed_side(self, teacher: nn.Module, device: torch.device, shards: Shards) -> dict[str, Any]:
        """Everything that depends only on the frozen teacher and reference: computed once per device and share
        (under DDP each rank computes its images' features, which every rank gathers)."""
        key = (device, *shards.key)
        if self._cache is not None and self._cache["key"] == key:
            return self._cache
        images, targets = self.images[shards.work], self.targets  # held on the host, streamed to the networks
        cache: dict[str, Any] = {"key": key, "images": images, "targets": targets}  # this rank's images, all targets
        cache["labels"] = distance_matrix(targets.flatten(1).double())
        sides = [("teacher", teacher, {t for _, t in self.pairs}, self.cam_layer[1])]
        if self.reference is not None:  # the reference has the student's layer names
            sides.append(("reference", self.reference, {s for s, _ in self.pairs}, self.cam_layer[0]))
        local = shards.compute(
            lambda: {
                f"{role}/{layer}": features
                for role, network, paired, cam in sides
                for layer, features in self._features(network, sorted(paired | {cam}), images).items()
            }
        )
        for role, _, paired, cam in sides:
            cache[role] = {layer: shards.gather(local[f"{role}/{layer}"]) for layer in sorted(paired | {cam})}
            cache[f"{role}_distances"] = distance_matrices(cache[role], paired, normalize_rows=self.normalize_rows)
            cache[f"rs_{role}"] = {
                layer: float(correlation_of_distances(matrices["plain"], cache["labels"]))
                for layer, matrices in cache[f"{role}_distances"].items()
            }
        self._cache = cache
        return cache

    def _features(self, network: nn.Module, names: list[str], images: Tensor) -> dict[str, Tensor]:
        """Features (pooled or flattened, ``features``) of several layers from eval-mode forwards on the
        network's device (modes restored), ``max_batch`` images at a time (default ``STREAM``), returned on the
        images' device."""
        device, parts = module_device(network, images.device), []
        for chunk in _streaming.chunk_slices(images.shape[0], self.max_batch):
            with capture_outputs(network, names) as outputs:
                eval_forward(network, images[chunk].to(device))
            parts.append(
                {name: feature_vectors(outputs[name], self.features).detach().to(images.device) for name in names}
            )
        return {name: torch.cat([part[name] for part in parts]) for name in names}

    @override
    def estimate_cost(self, pl_module: pl.LightningModule) -> tuple[float, str]:
        student, _, other = self._networks(pl_module)
        count = self.images.shape[0]
        sample = self.images[: min(count, self.max_batch or 4, 4)]
        seconds = seconds_per_pass(student, sample.to(module_device(student)), backward=False)
        for network in (student, other):
            seconds += seconds_per_pass(network, sample.to(module_device(network)), backward=True)
        return count / sample.shape[0] * seconds, f"{count} images: a student forward and two UniCAM passes"

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> tuple[dict[str, Any], Any]:
        """FSS, RS and the UniCAM maps now; a ``FloatingPointError`` when features, maps or scores are not
        finite (a diverged model). Under DDP each rank computes its images' features and maps; the features are
        gathered, so that every rank computes the distance matrices and the scores of the whole batch."""
        student, teacher, other = self._networks(pl_module)
        device = module_device(student, pl_module.device)
        shards = Shards(trainer, self.images.shape[0], device)
        cache = self._fixed_side(teacher, device, shards)
        images, targets = cache["images"], cache["targets"]
        options: dict[str, Any] = {
            "objective": self.objective,
            "prefix_tokens": self.prefix_tokens,
            "features": self.features,
        }
        unicams = {
            "distilled": UniCAM(student, other, layer=self.cam_layer[0], feature_layer_y=self._other_cam, **options),
            "residual": UniCAM(other, student, layer=self._other_cam, feature_layer_y=self.cam_layer[0], **options),
        }
        with ExitStack() as stack:  # the UniCAM forward passes stay open until their maps are computed
            passes: dict[str, UniCAMPass] = {}

            def student_side() -> dict[str, Tensor]:
                own = self._student_features(student, images)
                for kind, unicam in unicams.items():
                    passes[kind] = stack.enter_context(
                        unicam.forward_pass(images, max_batch=self.max_batch or _streaming.STREAM)
                    )
                return {**own, **{f"unicam/{kind}": forward.features for kind, forward in passes.items()}}

            whole = {name: shards.gather(value) for name, value in shards.compute(student_side).items()}
            scored: dict[str, Any] = {}

            def scores_and_maps() -> dict[str, Tensor]:  # the whole batch's scores, then this rank's maps
                own = distance_matrices(whole, {s for s, _ in self.pairs}, normalize_rows=self.normalize_rows)
                scored["values"], scored["layers"] = similarity_and_relevance(self.pairs, own, cache)
                compared = cache["reference"] if self.reference is not None else cache["teacher"]
                given = {"distilled": compared[self._other_cam], "residual": whole[self.cam_layer[0]]}  # Y's
                for kind, unicam in unicams.items():
                    scored[kind] = unicam.score(whole[f"unicam/{kind}"], given[kind], targets)
                return unicam_maps(passes, scored, shards.work)

            local = shards.compute(scores_and_maps)
        values, scores = scored["values"], {kind: float(scored[kind][0]) for kind in unicams}
        maps = {kind: shards.gather(local[kind], max(MAPS_KEPT, self.log_images)) for kind in unicams}
        finite = {kind: bool(shards.gather(local[f"{kind}/finite"]).all()) for kind in unicams}
        for kind in unicams:
            if not (math.isfinite(scores[kind]) and finite[kind]):
                raise FloatingPointError(f"the {kind} UniCAM maps or score hold NaN or infinite values")
        entry = {"epoch": epoch, "global_step": trainer.global_step, **values}
        entry.update(distilled_score=scores["distilled"], residual_score=scores["residual"])
        kept = min(MAPS_KEPT, self.images.shape[0])
        self.maps.append({"epoch": epoch, **{kind: maps[kind][:kept].cpu() for kind in unicams}})
        self.distances = {"epoch": epoch, "labels": cache["labels"].cpu(), "layers": scored["layers"]}
        return entry, {**maps, "values": values}

    def _student_features(self, student: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """The student's features of its paired layers and its CAM layer; a ``FloatingPointError`` naming the
        first layer whose features are not finite."""
        own = self._features(student, sorted({s for s, _ in self.pairs} | {self.cam_layer[0]}), images)
        for layer, features in own.items():
            if not bool(torch.isfinite(features).all()):
                raise FloatingPointError(
                    f"the student's features at {layer!r} hold NaN or infinite values (has the model diverged?)"
                )
        return own

    @override
    def publish(self, trainer: pl.Trainer, entry: dict[str, Any], shown: Any) -> None:
        if shown is not None:
            self._log(trainer, entry, shown)
        self.side_effects.run(entry, f"saving {self.file_path(trainer).name}", self._save, trainer)

    def _log(self, trainer: pl.Trainer, entry: dict[str, Any], shown: dict[str, Any]) -> None:
        step = trainer.global_step
        metrics = {f"{self.prefix}/{key}": value for key, value in shown["values"].items() if math.isfinite(value)}
        count = min(self.log_images, shown["distilled"].shape[0])
        for logger in trainer.loggers:
            self.side_effects.run(
                entry, f"logging scalars to {type(logger).__name__}", logger.log_metrics, metrics, step=step
            )
            if isinstance(logger, TensorBoardLogger) and count:
                for kind in ("distilled", "residual"):
                    what = "writing the UniCAM map grids to TensorBoard"
                    self.side_effects.run(entry, what, self._write_grid, logger, kind, shown[kind][:count], step)

    def _write_grid(self, logger: TensorBoardLogger, kind: str, maps: Tensor, step: int) -> None:
        pictures = probe_pictures(self.images[: maps.shape[0]], self.mean, self.std)
        grid = map_rows(pictures, [maps], labels=("input", f"{kind} map"))
        logger.experiment.add_image(f"{self.prefix}/{kind}", grid, step)

    def file_path(self, trainer: pl.Trainer) -> Path:
        """``kd_probe_unicam[_<name>].pt`` in the logger's folder (else the Trainer's root directory)."""
        return run_folder(trainer) / probe_file(UNICAM_FILE, self.name)

    def _save(self, trainer: pl.Trainer) -> None:
        record = {
            "version": FORMAT_VERSION[UNICAM_FILE],
            "settings": self.recorded_settings(),  # what `kd-probe report` checks before pairing runs
            "layers": self.pairs,
            "cam_layer": self.cam_layer,
            "reference": self.reference is not None,
            "objective": self.objective,
            "features": self.features,
            "normalize_rows": self.normalize_rows,
            "images": (self.images[:MAPS_KEPT] * self.std + self.mean).clamp(0, 1),
            "labels": self.labels[:MAPS_KEPT],
            "entries": self.history,
            "maps": self.maps,
            "distances": self.distances,
        }
        save_atomically(record, self.file_path(trainer))

    @override
    def recorded_settings(self) -> dict[str, Any]:
        return {
            "probe_set": probe_fingerprint(self.images, self.labels, self.targets, self.mean, self.std),
            "layers": [list(pair) for pair in self.pairs],
            "cam_layer": list(self.cam_layer),
            "networks": network_names(self.teacher, self.student, self.reference),
            "objective": self.objective,
            "features": self.features,
            "normalize_rows": self.normalize_rows,
            "prefix_tokens": self.prefix_tokens,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {"history": self.history, "maps": self.maps, "distances": self.distances}
        return {**state, "settings": self._settings_now()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_resume(state_dict)
        self.history = list(state_dict.get("history", []))
        self.maps = list(state_dict.get("maps", []))
        self.distances = state_dict.get("distances")
