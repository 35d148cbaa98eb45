"""``AgreementProbe``: what gets distilled — localisation, adversarial and invariance agreement (methods §2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from typing_extensions import override

from kd_probe.callbacks._agreement_eps import DEFAULT_EPS, check_eps, eps_key
from kd_probe.callbacks._base import BatchProbe
from kd_probe.callbacks._checks import (
    check_agreement_options,
    check_agreement_setup,
    check_normalization,
    check_prefix_tokens,
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
from kd_probe.callbacks._streaming import streamed
from kd_probe.core.agreement import (
    adversarial_transfer,
    cam_cosine,
    cam_energy_in_mask,
    cam_win_rate,
    cam_wins,
    fooled,
    grad_cam,
    ifgsm,
    prediction_agreement,
    prediction_unchanged,
    predictions,
)
from kd_probe.core.layers import module_device, resolve_layer
from kd_probe.core.render import map_rows
from kd_probe.core.transforms import TRANSFORMS
from kd_probe.io.paths import check_name
from kd_probe.io.run_files import AGREEMENT_FILE, FORMAT_VERSION, probe_file
from kd_probe.io.tags import AGREEMENT

__all__ = ["AgreementProbe"]


class AgreementProbe(ProbeSetReader, BatchProbe):
    """Measure, during training, how much the student agrees with its teacher beyond accuracy ([WK]).

    On a fixed held-out batch, at epoch 0 (before any optimizer step) and every ``every_n_epochs``:
    localisation agreement (cosine of the teacher's and the student's Grad-CAM of the true class; with
    ``reference``, the win-rate against that independently trained model; with masks, the share of CAM
    energy on the object), adversarial transfer (the share of the teacher-fooling I-FGSM images that also
    fool the student) at each radius of an ε sweep in [0, 1] pixel units, and invariance agreement per
    transform. Teacher-side work (teacher CAMs, the adversarial images of every ε, teacher predictions) is
    computed once and cached, so each probe costs one student backward and a few forwards. Under DDP the
    images are shared out over the ranks (rank ``r`` of ``w`` takes images ``r, r + w, …``) and their values
    gathered in the images' order before scoring, on every rank; rank zero logs and writes. An image's
    transforms are drawn from ``seed`` for the whole probe set, so they depend on its index only, not on the
    number of processes. The model is left as it was (methods §4). A failing probe (e.g. a diverged student
    with NaN logits or CAMs; under DDP, a failure on any rank fails it on every rank) is warned about and
    recorded as failed with the reason, never as numbers; a logger, an image grid or a file that fails is
    warned about once and noted in the entry's ``problems``; training goes on. At the start of fit a dry run
    logs what a probe is expected to cost, and after the first epoch which share of a training epoch that is (a
    warning when it is more than the epoch).

    Every successful entry of :attr:`history` also holds ``per_image``, CPU tensors ``[N]`` whose means are the
    scalars: ``cam_cosine``, ``cam_energy_in_mask/{student,teacher}`` (with masks; NaN for an empty map, the
    scalar is the mean over the others), ``cam_win`` (with ``reference``: ``c_S > c_ref``),
    ``teacher_fooled/eps_<k>`` and ``student_fooled/eps_<k>`` per ε (each model's prediction on the teacher's
    adversarial image differs from its own clean prediction; the transfer is
    ``sum(teacher_fooled & student_fooled) / sum(teacher_fooled)``) and ``invariance/<transform>/{student,teacher}``
    (top-1 unchanged). The history is kept in the checkpoint and, after every probe, in
    ``kd_probe_agreement[_<name>].pt`` in the logger's folder (:meth:`file_path`; loads with
    ``torch.load(path, weights_only=True)``).

    Args:
        images: ``[N, C, H, W]`` inputs (normalised as the models expect), a dataset of
            ``(image, label, mask)`` triples, a data module with a ``probe_set`` (and ``mean``/``std``),
            ``"datamodule"`` (the Trainer's, read at ``setup``) or the path of a file ``torch.save({"images": ...,
            "labels": ..., "masks": ..., "mean": ..., "std": ...})`` (masks and normalisation optional).
        labels: ``[N]`` classes when ``images`` is a tensor. masks: optional ``[N, H, W]`` foreground masks.
        teacher_layer, student_layer: dotted names of the Grad-CAM layers.
        reference: an independently trained model (enables ``cam_win_rate``).
        every_n_epochs: how often to probe.
        eps: I-FGSM radius in pixel units ([0, 1]), or a list of radii (default 1, 2, 4 and 8 grey levels:
            at 1/255 a teacher is rarely fooled, so that transfer rests on few images). steps: I-FGSM steps
            (step size ε/4).
        transforms: any of ``"color"``, ``"crop"``, ``"shift"``.
        name: sub-prefix of the tags, one safe path component (letters, digits, ``_``, ``-``, ``.``).
        teacher, student: attribute names in the LightningModule, or modules.
        normalization: ``(mean, std)`` per channel of the inputs (default: the data module's, else none).
        seed: seed of the transforms. log_images: images in the CAM grid (any number of channels: one is
            shown as grey, extras are dropped).
        max_batch: most images per forward and backward pass (``None``: up to 256, the chunk the probe images
            visit the device in: they stay on the host, as do the cached adversarial and transformed images, so
            a probe set of thousands never sits on the device whole). The values do not depend on it.
        prefix_tokens: for a CAM layer that outputs transformer tokens ``[N, T, D]`` (a ViT block), the leading
            tokens that are not patches (``None``: infer a class token or none); feature maps ignore it.

    Logged metrics (``<p>`` = ``3_agreement`` or ``3_agreement/<name>``; step = ``trainer.global_step``):
        ``<p>/cam_cosine``, ``<p>/cam_win_rate`` (with reference), ``<p>/cam_energy_in_mask/{student,teacher}``
        (with masks), ``<p>/adv_transfer/eps_<k>`` and ``<p>/teacher_fooling_rate/eps_<k>`` for each ε, one ε
        or several (``k`` = ε·255: ``eps_1``, ``eps_0.5``; a transfer no image fooled the teacher for is NaN in
        the entry and not logged), ``<p>/invariance/<transform>/{student,teacher}``, and the image grid
        ``<p>/cams`` (a row per image; columns, named in a strip on top: input, teacher CAM, student CAM); with a ``TensorBoardLogger`` also the
        run's Custom Scalars layout and HParams (:class:`ProbeCallback`).

    Example::

        probe = AgreementProbe(data, teacher_layer="features.relu6", student_layer="features.relu6")
        pl.Trainer(max_epochs=10, callbacks=[probe]).fit(DistillationModule(student, teacher), data)
    """

    description = "agreement probe"
    group = AGREEMENT
    media = "the agreement CAM grid is"  # logged to TensorBoard only (ProbeCallback warns once without one)

    def __init__(
        self,
        images: Any,
        labels: Tensor | None = None,
        masks: Tensor | None = None,
        *,
        teacher_layer: str,
        student_layer: str,
        reference: nn.Module | None = None,
        every_n_epochs: int = 1,
        eps: float | Sequence[float] = DEFAULT_EPS,
        steps: int = 5,
        transforms: Sequence[str] = ("color", "crop", "shift"),
        name: str | None = None,
        teacher: str | nn.Module = "teacher",
        student: str | nn.Module = "student",
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        seed: int = 0,
        log_images: int = 4,
        max_batch: int | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        check_agreement_options(steps, transforms, log_images, seed, reference)
        self.eps = check_eps(eps)
        self.eps_keys = tuple(eps_key(radius) for radius in self.eps)
        unknown = sorted(set(transforms) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"`transforms` has unknown names {unknown}; expected some of {sorted(TRANSFORMS)}.")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an integer ≥ 1, got {every_n_epochs!r}.")
        self.teacher_layer, self.student_layer, self.reference = teacher_layer, student_layer, reference
        self.every_n_epochs, self.steps, self.transforms = every_n_epochs, steps, tuple(transforms)
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"`max_batch` must be None or an integer ≥ 1 (images per pass), got {max_batch!r}.")
        self.name = None if name is None else check_name(name)
        self.teacher, self.student, self.seed, self.log_images = teacher, student, seed, log_images
        self.max_batch = max_batch
        check_prefix_tokens(prefix_tokens)
        self.prefix_tokens = prefix_tokens
        self.history: list[dict[str, Any]] = []
        self._cache: dict[str, Any] | None = None
        self._start_guards()
        self._take_probe_set(images, labels=labels, masks=masks, normalization=normalization)  # or in `setup`

    def _read_probe_set(
        self,
        source: Any,
        labels: Tensor | None = None,
        masks: Tensor | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        self.images, self.masks, probe_labels = read_probe_set(
            source, masks, labels, need_masks=False, need_labels=True, owner="AgreementProbe"
        )
        assert probe_labels is not None  # read_probe_set requires labels here
        self.labels = probe_labels
        check_normalization(normalization, self.images.shape[1])
        self.mean, self.std = probe_normalization(source, normalization, self.images.shape[1])

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, student_layer=self.student_layer)

    @override
    def check_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        resolve_layer(teacher, self.teacher_layer, argument="teacher_layer")
        resolve_layer(student, self.student_layer, argument="student_layer")
        if self.reference is not None:
            resolve_layer(self.reference, self.student_layer, argument="student_layer")
        check_agreement_setup(
            teacher,
            student,
            self.images,
            self.labels,
            self.teacher_layer,
            self.student_layer,
            self.reference,
            self.prefix_tokens,
        )

    def _teacher_side(self, teacher: nn.Module, device: torch.device, shards: Shards) -> dict[str, Any]:
        """Everything that depends only on the (frozen) teacher and the reference, for this rank's images
        (``shards.work``): computed once per device and share."""
        key = (device, *shards.key)
        if self._cache is not None and self._cache["key"] == key:
            return self._cache
        images, labels = self.images[shards.work], self.labels[shards.work]  # held on the host, streamed to `device`
        mean, std = self.mean.to(device), self.std.to(device)

        def attack(radius: float) -> Tensor:
            clamp = ((0 - mean) / std, (1 - mean) / std)
            return streamed(
                lambda x, y: ifgsm(
                    teacher, x, y, eps=radius / std, steps=self.steps, clamp=clamp, max_batch=self.max_batch
                ),
                device,
                images,
                labels,
            )

        adversarial = {eps: attack(radius) for eps, radius in zip(self.eps_keys, self.eps, strict=True)}
        transformed = {}
        for name in self.transforms:
            # drawn for the whole probe set, then this rank's rows: an image's transform depends on the seed and
            # its index only, not on how many processes probe
            generator = torch.Generator().manual_seed(self.seed)
            options = (
                {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()} if name == "color" else {}
            )
            transformed[name] = TRANSFORMS[name](self.images, generator, **options)[shards.work]
        cache: dict[str, Any] = {
            "key": key,
            "images": images,
            "labels": labels,
            "cams": _finite(
                self._cam(teacher, device, images, labels, self.teacher_layer), "the teacher's Grad-CAM maps"
            ),
            "clean": self._predict(teacher, device, images),
            "adversarial": adversarial,  # per ε name
            "adversarial_predictions": {k: self._predict(teacher, device, v) for k, v in adversarial.items()},
            "transformed": transformed,
            "transformed_predictions": {k: self._predict(teacher, device, v) for k, v in transformed.items()},
        }
        if self.reference is not None:
            reference_cams = self._cam(self.reference.to(device), device, images, labels, self.student_layer)
            cache["reference_cosine"] = cam_cosine(
                _finite(reference_cams, "the reference's Grad-CAM maps"), cache["cams"]
            )
        self._cache = cache
        return cache

    def _cam(self, network: nn.Module, device: torch.device, images: Tensor, labels: Tensor, layer: str) -> Tensor:
        """Grad-CAM of the true class, the images streamed to ``device``."""
        return streamed(
            lambda x, y: grad_cam(
                network, x, y, layer=layer, max_batch=self.max_batch, prefix_tokens=self.prefix_tokens
            ),
            device,
            images,
            labels,
        )

    def _predict(self, network: nn.Module, device: torch.device, images: Tensor) -> Tensor:
        """Top-1 classes, the images streamed to ``device``; a ``FloatingPointError`` naming the model's NaN or
        infinite logits."""
        return streamed(lambda x: predictions(network, x, max_batch=self.max_batch), device, images)

    @override
    def estimate_cost(self, pl_module: pl.LightningModule) -> tuple[float, str]:
        _, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        count = self.images.shape[0]
        sample = self.images[: min(count, self.max_batch or 4, 4)].to(module_device(student, pl_module.device))
        backward = seconds_per_pass(student, sample, backward=True)
        forward = seconds_per_pass(student, sample, backward=False)
        forwards = 1 + len(self.eps) + len(self.transforms)  # clean, one adversarial batch per ε, transforms
        seconds = count / sample.shape[0] * (backward + forwards * forward)
        return seconds, f"{count} images: a student Grad-CAM and {forwards} forward passes each"

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> tuple[dict[str, Any], Any]:
        """The agreement scores now; a ``FloatingPointError`` when the student's logits or CAMs are not finite.
        Under DDP each rank computes its images' values, which every rank gathers before scoring them."""
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        device = module_device(student, pl_module.device)
        shards = Shards(trainer, self.images.shape[0], device)
        local = shards.compute(lambda: self._per_image(teacher, student, device, shards))
        whole = {key: shards.gather(value) for key, value in local.items() if not key.startswith("cams/")}
        roles = ("teacher", "student") if self.log_images else ()
        shown = {role: shards.gather(local[f"cams/{role}"], self.log_images) for role in roles}  # the grid's CAMs
        cosine = whole["cam_cosine"]
        per_image: dict[str, Tensor] = {"cam_cosine": cosine}
        values: dict[str, float] = {"cam_cosine": float(cosine.mean())}
        if "reference_cosine" in whole:
            per_image["cam_win"] = cam_wins(cosine, whole["reference_cosine"])
            values["cam_win_rate"] = cam_win_rate(cosine, whole["reference_cosine"])
        if self.masks is not None:
            for role in ("student", "teacher"):
                per_image[f"cam_energy_in_mask/{role}"] = energy = whole[f"cam_energy_in_mask/{role}"]
                values[f"cam_energy_in_mask/{role}"] = float(energy.nanmean())  # over images with a non-empty map
        teacher_clean, student_clean = whole["clean/teacher"], whole["clean/student"]
        for key in self.eps_keys:
            teacher_adversarial, student_adversarial = whole[f"{key}/teacher"], whole[f"{key}/student"]
            per_image[f"teacher_fooled/{key}"] = fooled(teacher_clean, teacher_adversarial)
            per_image[f"student_fooled/{key}"] = fooled(student_clean, student_adversarial)
            transfer, rate = adversarial_transfer(
                teacher_clean, teacher_adversarial, student_clean, student_adversarial
            )
            values.update({f"adv_transfer/{key}": transfer, f"teacher_fooling_rate/{key}": rate})
        for name in self.transforms:
            for role, clean in (("student", student_clean), ("teacher", teacher_clean)):
                moved = whole[f"invariance/{name}/{role}"]
                per_image[f"invariance/{name}/{role}"] = prediction_unchanged(clean, moved)
                values[f"invariance/{name}/{role}"] = prediction_agreement(clean, moved)
        entry: dict[str, Any] = {"epoch": epoch, "global_step": trainer.global_step, **values}
        entry["per_image"] = {key: value.detach().cpu() for key, value in per_image.items()}
        return entry, shown

    def _per_image(
        self, teacher: nn.Module, student: nn.Module, device: torch.device, shards: Shards
    ) -> dict[str, Tensor]:
        """This rank's images' values (one row each): the CAM cosines (and the reference's, the energies in the
        masks), both models' top-1 predictions on the clean, adversarial (``<eps key>/<role>``) and transformed
        (``invariance/<transform>/<role>``) images, and both CAMs (``cams/<role>``)."""
        cache = self._teacher_side(teacher, device, shards)
        student_clean = self._predict(student, device, cache["images"])
        cams = _finite(
            self._cam(student, device, cache["images"], cache["labels"], self.student_layer),
            "the student's Grad-CAM maps",
        )
        values = {"cam_cosine": _finite(cam_cosine(cams, cache["cams"]), "the Grad-CAM cosines")}
        if "reference_cosine" in cache:
            values["reference_cosine"] = cache["reference_cosine"]
        if self.masks is not None:
            masks = self.masks[shards.work]
            for role, role_cams in (("student", cams), ("teacher", cache["cams"])):
                values[f"cam_energy_in_mask/{role}"] = cam_energy_in_mask(role_cams, masks)
        values.update({"clean/teacher": cache["clean"], "clean/student": student_clean})
        for key, adversarial in cache["adversarial"].items():
            values[f"{key}/teacher"] = cache["adversarial_predictions"][key]
            values[f"{key}/student"] = self._predict(student, device, adversarial)
        for name, batch in cache["transformed"].items():
            values[f"invariance/{name}/student"] = self._predict(student, device, batch)
            values[f"invariance/{name}/teacher"] = cache["transformed_predictions"][name]
        return {**values, "cams/teacher": cache["cams"], "cams/student": cams}

    media_what = "writing the CAM grid to TensorBoard"

    @override
    def save_file(self, trainer: pl.Trainer, entry: dict[str, Any]) -> None:
        self.side_effects.run(entry, f"saving {self.file_path(trainer).name}", self._save, trainer)

    @override
    def write_media(self, logger: TensorBoardLogger, shown: Any, step: int) -> None:
        self._write_grid(logger, shown, step)

    def _write_grid(self, logger: TensorBoardLogger, cams: dict[str, Tensor], step: int) -> None:
        logger.experiment.add_image(f"{self.prefix}/cams", self._grid(cams), global_step=step)

    def _grid(self, cams: dict[str, Tensor]) -> Tensor:
        """A row per shown image: the input, the teacher's and the student's CAMs (``cams``: the first images')."""
        shown = min(self.log_images, cams["student"].shape[0])
        pictures = probe_pictures(self.images[:shown], self.mean, self.std)
        maps = [cams["teacher"][:shown], cams["student"][:shown]]
        return map_rows(pictures, maps, labels=("input", "teacher CAM", "student CAM"))

    def file_path(self, trainer: pl.Trainer) -> Path:
        """``kd_probe_agreement[_<name>].pt`` in the logger's folder (else the Trainer's root directory), written
        atomically after every probe: ``{"version": 1, "eps": [floats], "eps_keys": ["eps_1", ...], "steps",
        "transforms": [names], "teacher_layer", "student_layer", "reference": bool, "masks": bool, "images": N,
        "labels": [N] long, "entries": history}``."""
        return run_folder(trainer) / probe_file(AGREEMENT_FILE, self.name)

    def _save(self, trainer: pl.Trainer) -> None:
        """The settings, the probe labels and every entry (with its per-image values): plain containers,
        numbers, strings and tensors, so that ``torch.load(path, weights_only=True)`` reads it."""
        record = {
            "version": FORMAT_VERSION[AGREEMENT_FILE],
            "settings": self.recorded_settings(),  # what `kd-probe report` checks before pairing runs
            "eps": list(self.eps),
            "eps_keys": list(self.eps_keys),
            "steps": self.steps,
            "transforms": list(self.transforms),
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
            "reference": self.reference is not None,
            "masks": self.masks is not None,
            "images": int(self.images.shape[0]),
            "labels": self.labels,
            "entries": self.history,
        }
        save_atomically(record, self.file_path(trainer))

    @override
    def recorded_settings(self) -> dict[str, Any]:
        return {
            "probe_set": probe_fingerprint(self.images, self.labels, self.masks, self.mean, self.std),
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
            "networks": network_names(self.teacher, self.student, self.reference),
            "eps": list(self.eps),
            "steps": self.steps,
            "transforms": list(self.transforms),
            "seed": self.seed,
            "prefix_tokens": self.prefix_tokens,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "settings": self._settings_now()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_resume(state_dict)
        self.history = list(state_dict.get("history", []))


def _finite(values: Tensor, what: str) -> Tensor:
    """``values``, or a ``FloatingPointError`` naming them when they hold NaN or infinities (a diverged model)."""
    if not bool(torch.isfinite(values).all()):
        raise FloatingPointError(f"{what} hold NaN or infinite values (has the model diverged?)")
    return values
