"""The names of the tags kd_probe logs to TensorBoard (scalars, images, histograms), in one place.

Every tag is ``group[/name]/leaf``: a numbered group, the probe's ``name`` when it has one, and what is measured
(``1_knowledge_points/n_fg``, ``3_agreement/teacher/cam_cosine``, ``6_weights/features/step_length``).
TensorBoard's Scalars and Time Series tabs group tags by their first component, sort the groups and the tags
in each in natural order (digits by value, digits before letters) and open the first two groups: the numbers put
the groups in the order of the *Custom Scalars* layout, knowledge points first, and before Lightning's own
(``epoch``, ``train``, ``val``, ``test``).

Runs written before the numbered groups logged every tag under :data:`OLD_PREFIX`
(``kd_probe[/<name>]/knowledge_points/n_fg``, ``kd_probe/agreement/cam_cosine``, ...); :mod:`kd_probe.io.runs`
reads both.
"""

from __future__ import annotations

__all__ = [
    "AGREEMENT",
    "GROUPS",
    "KNOWLEDGE_POINTS",
    "LEARNING_STABILITY",
    "OLD_PREFIX",
    "SIGMA",
    "SIMILARITY",
    "UNICAM",
    "WEIGHTS",
    "tag",
]

KNOWLEDGE_POINTS = "1_knowledge_points"  # N_fg, N_bg, fg_ratio, H̄; the maps and the entropy-gap histogram
LEARNING_STABILITY = "2_learning_stability"  # D_mean, D_std, D, ρ, ρ_all
AGREEMENT = "3_agreement"  # AgreementProbe: CAMs, adversarial transfer per ε, invariance
UNICAM = "4_unicam"  # UniCAMProbe: FSS, RS per layer; the distilled and residual map grids
SIMILARITY = "5_similarity"  # SimilarityProbe: CKA, the class-correlation gap
WEIGHTS = "6_weights"  # WeightTrajectoryMonitor, per tracked module
SIGMA = "7_sigma"  # how the σ optimisation of the knowledge-point probe went
GROUPS = (KNOWLEDGE_POINTS, LEARNING_STABILITY, AGREEMENT, UNICAM, SIMILARITY, WEIGHTS, SIGMA)
OLD_PREFIX = "kd_probe/"  # what every tag started with before the numbered groups


def tag(group: str, name: str | None, leaf: str = "") -> str:
    """``group/leaf``, ``group/name/leaf`` for a probe with a ``name``; without ``leaf``, the prefix of the
    probe's tags in ``group``.

    Example::

        >>> tag(AGREEMENT, None, "cam_cosine"), tag(AGREEMENT, "teacher", "cam_cosine"), tag(UNICAM, "s")
        ('3_agreement/cam_cosine', '3_agreement/teacher/cam_cosine', '4_unicam/s')
    """
    return "/".join(part for part in (group, name, leaf) if part)
