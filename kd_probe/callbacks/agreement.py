"""``AgreementProbe``: what gets distilled — localisation, adversarial and invariance agreement (spec §2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from kd_probe.callbacks._common import BatchProbe, networks_by_role, probe_normalization, read_probe_set
from kd_probe.core.agreement import (
    adversarial_transfer,
    cam_cosine,
    cam_energy_in_mask,
    cam_win_rate,
    grad_cam,
    ifgsm,
    prediction_agreement,
    predictions,
)
from kd_probe.core.layers import module_device, resolve_layer
from kd_probe.core.render import map_rows
from kd_probe.core.transforms import TRANSFORMS

__all__ = ["AgreementProbe"]


class AgreementProbe(BatchProbe):
    """Measure, during training, how much the student agrees with its teacher beyond accuracy ([WK]).

    On a fixed held-out batch, at epoch 0 (before any optimizer step) and every ``every_n_epochs``:
    localisation agreement (cosine of the teacher's and the student's Grad-CAM of the true class; with
    ``reference``, the win-rate against that independently trained model; with masks, the share of CAM
    energy on the object), adversarial transfer (the share of the teacher-fooling I-FGSM images, ε in
    [0, 1] pixel units, that also fool the student) and invariance agreement per transform. Teacher-side
    work (teacher CAMs, adversarial images, teacher predictions) is computed once and cached, so each
    probe costs one student backward and a few forwards. Probe work runs on rank zero only (the batch is
    small); the model is left as it was (spec §4). A failing probe is warned about and recorded as failed;
    training goes on.

    Args:
        images: ``[N, C, H, W]`` inputs (normalised as the models expect), a dataset of
            ``(image, label, mask)`` triples, or a data module with a ``probe_set`` (and ``mean``/``std``).
        labels: ``[N]`` classes when ``images`` is a tensor. masks: optional ``[N, H, W]`` foreground masks.
        teacher_layer, student_layer: dotted names of the Grad-CAM layers.
        reference: an independently trained model (enables ``cam_win_rate``).
        every_n_epochs: how often to probe.
        eps: I-FGSM radius in pixel units ([0, 1]); steps: I-FGSM steps (step size ε/4).
        transforms: any of ``"color"``, ``"crop"``, ``"shift"``.
        name: sub-prefix of the tags. teacher, student: attribute names in the LightningModule, or modules.
        normalization: ``(mean, std)`` per channel of the inputs (default: the data module's, else none).
        seed: seed of the transforms. log_images: images in the CAM grid.

    Logged metrics (``<p>`` = ``kd_probe`` or ``kd_probe/<name>``; step = ``trainer.global_step``):
        ``<p>/agreement/cam_cosine``, ``<p>/agreement/cam_win_rate`` (with reference),
        ``<p>/agreement/cam_energy_in_mask/{student,teacher}`` (with masks), ``<p>/agreement/adv_transfer``,
        ``<p>/agreement/teacher_fooling_rate``, ``<p>/agreement/invariance/<transform>/{student,teacher}``,
        and the image grid ``<p>/agreement/cams`` (rows: input, teacher CAM, student CAM).

    Example::

        probe = AgreementProbe(data, teacher_layer="features.relu6", student_layer="features.relu6")
        pl.Trainer(max_epochs=10, callbacks=[probe]).fit(DistillationModule(student, teacher), data)
    """

    description = "agreement probe"

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
        eps: float = 1 / 255,
        steps: int = 5,
        transforms: Sequence[str] = ("color", "crop", "shift"),
        name: str | None = None,
        teacher: str | nn.Module = "teacher",
        student: str | nn.Module = "student",
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        seed: int = 0,
        log_images: int = 4,
    ) -> None:
        self.images, self.masks, probe_labels = read_probe_set(
            images, masks, labels, need_masks=False, need_labels=True
        )
        assert probe_labels is not None  # read_probe_set requires labels here
        self.labels = probe_labels
        unknown = sorted(set(transforms) - set(TRANSFORMS))
        if unknown:
            raise ValueError(f"`transforms` has unknown names {unknown}; expected some of {sorted(TRANSFORMS)}.")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an integer ≥ 1, got {every_n_epochs!r}.")
        if not (isinstance(eps, (int, float)) and eps >= 0):
            raise ValueError(f"`eps` must be a number ≥ 0 (pixel units), got {eps!r}.")
        self.teacher_layer, self.student_layer, self.reference = teacher_layer, student_layer, reference
        self.every_n_epochs, self.eps, self.steps, self.transforms = every_n_epochs, eps, steps, tuple(transforms)
        self.name, self.teacher, self.student, self.seed, self.log_images = name, teacher, student, seed, log_images
        self.mean, self.std = probe_normalization(images, normalization, self.images.shape[1])
        self.history: list[dict[str, Any]] = []
        self._cache: dict[str, Any] | None = None

    @property
    def prefix(self) -> str:
        return f"kd_probe/{self.name}/agreement" if self.name else "kd_probe/agreement"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, student_layer=self.student_layer)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        resolve_layer(teacher, self.teacher_layer, argument="teacher_layer")
        resolve_layer(student, self.student_layer, argument="student_layer")
        if self.reference is not None:
            resolve_layer(self.reference, self.student_layer, argument="student_layer")
        if not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            rank_zero_warn("kd_probe: no TensorBoardLogger: the agreement CAM grid is not logged, scalars are.")

    def _teacher_side(self, teacher: nn.Module, device: torch.device) -> dict[str, Any]:
        """Everything that depends only on the (frozen) teacher and the reference: computed once."""
        if self._cache is not None and self._cache["device"] == device:
            return self._cache
        images, labels = self.images.to(device), self.labels.to(device)
        mean, std = self.mean.to(device), self.std.to(device)
        adversarial = ifgsm(
            teacher, images, labels, eps=self.eps / std, steps=self.steps, clamp=((0 - mean) / std, (1 - mean) / std)
        )
        transformed = {}
        for name in self.transforms:
            generator = torch.Generator().manual_seed(self.seed)
            options = (
                {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()} if name == "color" else {}
            )
            transformed[name] = TRANSFORMS[name](images, generator, **options)
        cache: dict[str, Any] = {
            "device": device,
            "images": images,
            "labels": labels,
            "cams": grad_cam(teacher, images, labels, layer=self.teacher_layer),
            "clean": predictions(teacher, images),
            "adversarial": adversarial,
            "adversarial_predictions": predictions(teacher, adversarial),
            "transformed": transformed,
            "transformed_predictions": {k: predictions(teacher, v) for k, v in transformed.items()},
        }
        if self.reference is not None:
            cache["reference_cosine"] = cam_cosine(
                grad_cam(self.reference.to(device), images, labels, layer=self.student_layer), cache["cams"]
            )
        self._cache = cache
        return cache

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> dict[str, Any]:
        """Probe now on this process, append to the history and log."""
        teacher, student = networks_by_role(pl_module, teacher=self.teacher, student=self.student)
        device = module_device(student, pl_module.device)
        cache = self._teacher_side(teacher, device)
        cams = grad_cam(student, cache["images"], cache["labels"], layer=self.student_layer)
        cosine = cam_cosine(cams, cache["cams"])
        student_clean = predictions(student, cache["images"])
        transfer, fooling = adversarial_transfer(
            cache["clean"], cache["adversarial_predictions"], student_clean, predictions(student, cache["adversarial"])
        )
        values = {"cam_cosine": float(cosine.mean()), "adv_transfer": transfer, "teacher_fooling_rate": fooling}
        if "reference_cosine" in cache:
            values["cam_win_rate"] = cam_win_rate(cosine, cache["reference_cosine"])
        if self.masks is not None:
            masks = self.masks.to(device)
            values["cam_energy_in_mask/student"] = float(cam_energy_in_mask(cams, masks).nanmean())
            values["cam_energy_in_mask/teacher"] = float(cam_energy_in_mask(cache["cams"], masks).nanmean())
        for name, batch in cache["transformed"].items():
            values[f"invariance/{name}/student"] = prediction_agreement(student_clean, predictions(student, batch))
            values[f"invariance/{name}/teacher"] = prediction_agreement(
                cache["clean"], cache["transformed_predictions"][name]
            )
        entry = {"epoch": epoch, "global_step": trainer.global_step, **values}
        self.history.append(entry)
        metrics = {f"{self.prefix}/{key}": value for key, value in values.items() if math.isfinite(value)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger) and self.log_images:
                logger.experiment.add_image(
                    f"{self.prefix}/cams", self._grid(cache, cams), global_step=trainer.global_step
                )
        return entry

    def _grid(self, cache: dict[str, Any], cams: Tensor) -> Tensor:
        shown = min(self.log_images, cams.shape[0])
        pictures = (cache["images"][:shown].cpu() * self.std + self.mean).clamp(0, 1)[:, :3]
        return map_rows(pictures, [cache["cams"][:shown], cams[:shown]])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
