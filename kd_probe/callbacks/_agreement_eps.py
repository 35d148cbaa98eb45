"""The ε sweep of ``AgreementProbe``: checking the I-FGSM radii and naming them (``eps_<k>``, k = ε·255)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

from torch import Tensor

__all__ = ["DEFAULT_EPS", "check_eps", "eps_key"]

DEFAULT_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)  # 1/255 first: the default of methods §2.2
_UNITS = "pixel units: 8/255 is 8 grey levels"


def eps_key(eps: float) -> str:
    """The name of a radius in tags and per-image keys: ``eps_<k>``, ``k`` = ε·255 rounded to 4 decimals and
    written compactly.

    Example::

        >>> eps_key(1 / 255), eps_key(0.5 / 255), eps_key(0.3)
        ('eps_1', 'eps_0.5', 'eps_76.5')
    """
    grey_levels = round(eps * 255, 4) + 0.0  # + 0.0: -0.0 becomes 0.0
    return "eps_" + f"{grey_levels:.4f}".rstrip("0").rstrip(".")


def check_eps(eps: object) -> tuple[float, ...]:
    """``eps`` (one radius, or a non-empty sequence of them) as a tuple of floats in the order given, or a
    ``ValueError`` naming the value and what is expected (numbers in [0, 1], distinct ``eps_<k>`` names)."""
    if isinstance(eps, Tensor) or (hasattr(eps, "tolist") and hasattr(eps, "ndim")):  # a tensor or an array
        eps = eps.tolist()  # type: ignore[union-attr]
    if isinstance(eps, Sequence) and not isinstance(eps, (str, bytes)):
        values = list(eps)
        if not values:
            raise ValueError(f"`eps` must hold at least one I-FGSM radius in [0, 1] ({_UNITS}), got {eps!r}.")
    elif isinstance(eps, Real) and not isinstance(eps, bool):
        values = [eps]
    else:
        raise ValueError(f"`eps` must be an I-FGSM radius in [0, 1] or a list of radii ({_UNITS}), got {eps!r}.")
    for value in values:
        number = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        if not number or not 0 <= value <= 1:  # type: ignore[operator]
            given = repr(value) if value is eps else f"{value!r} in {eps!r}"
            raise ValueError(f"`eps` radii must be finite numbers in [0, 1] ({_UNITS}), got {given}.")
    radii = tuple(float(value) for value in values)  # type: ignore[arg-type]
    keys = [eps_key(value) for value in radii]
    for index, key in enumerate(keys):
        if key in keys[:index]:
            first = radii[keys.index(key)]
            raise ValueError(
                f"`eps` values {first!r} and {radii[index]!r} both give the name {key} (ε·255 rounded to 4 "
                f"decimals); give distinct radii, got {eps!r}."
            )
    return radii
