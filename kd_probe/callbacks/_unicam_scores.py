"""The batch statistics of ``UniCAMProbe`` (methods §3): distance matrices of features, and FSS and RS from them.

Pure functions of whole-batch features and matrices: under DDP every rank calls them on the gathered features,
so that they see the batch a single process would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kd_probe.core.distance_correlation import correlation_of_distances, distance_matrix, relevance_given_of_distances
from kd_probe.core.unicam import UniCAMPass

__all__ = ["distance_matrices", "similarity_and_relevance", "unicam_maps"]


def distance_matrices(
    features: dict[str, Tensor], names: set[str], *, normalize_rows: bool
) -> dict[str, dict[str, Tensor]]:
    """Per layer in ``names``, the float64 distance matrix of the features (``"plain"``) and, with
    ``normalize_rows``, of the L2-normalised features (``"rows"``, for the V-statistic FSS)."""
    matrices = {}
    for layer in sorted(names):
        vectors = features[layer]
        matrices[layer] = {"plain": distance_matrix(vectors.double())}
        if normalize_rows:
            matrices[layer]["rows"] = distance_matrix(vectors.double(), normalize_rows=True)
    return matrices


def similarity_and_relevance(
    pairs: list[tuple[str, str]], own: dict[str, dict[str, Tensor]], fixed: dict[str, Any]
) -> tuple[dict[str, float], dict[str, dict[str, Tensor]]]:
    """FSS and RS of every ``(student layer, teacher layer)`` pair from the distance matrices of the student's
    features (``own``, :func:`distance_matrices`) and the teacher's and reference's (``fixed``: the probe's cache,
    ``labels``, ``<role>_distances`` and ``rs_<role>``), and those matrices on the CPU per student layer (the
    file's ``distances``)."""
    values: dict[str, float] = {}
    layers: dict[str, dict[str, Tensor]] = {}
    labels, reference = fixed["labels"], "reference_distances" in fixed
    for s, t in pairs:
        student, teacher = own[s], fixed["teacher_distances"][t]
        given = fixed["reference_distances"][s] if reference else teacher
        values[f"fss/{s}"] = float(correlation_of_distances(teacher["plain"], student["plain"]))
        rows = (teacher.get("rows", teacher["plain"]), student.get("rows", student["plain"]))
        values[f"fss_v/{s}"] = float(correlation_of_distances(*rows, bias_corrected=False))
        values[f"rs/teacher/{s}"] = fixed["rs_teacher"][t]
        values[f"rs/student/{s}"] = float(correlation_of_distances(student["plain"], labels))
        if reference:
            values[f"rs/reference/{s}"] = fixed["rs_reference"][s]
        values[f"rs/distilled/{s}"] = float(relevance_given_of_distances(student["plain"], given["plain"], labels))
        values[f"rs/residual/{s}"] = float(relevance_given_of_distances(given["plain"], student["plain"], labels))
        kept = {"teacher": teacher["plain"], "student": student["plain"]}
        if reference:
            kept["reference"] = given["plain"]
        if "rows" in student:
            kept.update(teacher_rows=teacher["rows"], student_rows=student["rows"])
        layers[s] = {key: matrix.cpu() for key, matrix in kept.items()}
    return values, layers


def unicam_maps(passes: dict[str, UniCAMPass], scored: dict[str, Any], rows: list[int]) -> dict[str, Tensor]:
    """The maps of each kind of the images ``rows`` (each pass's), from the gradient of the whole batch's score
    (``scored[kind]``: the score and its gradient), and whether each image's map is finite (``<kind>/finite``)."""
    maps = {kind: forward.maps(scored[kind][1][rows]) for kind, forward in passes.items()}
    return {**maps, **{f"{kind}/finite": torch.isfinite(value).flatten(1).all(dim=1) for kind, value in maps.items()}}
