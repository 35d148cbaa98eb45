"""A Griffe extension for the API reference: the docstrings' Sphinx roles (``:func:`~kd_probe.x.f```) are shown
as code (``f``), since Markdown has no roles. Loaded by mkdocs.yml; not a page (``exclude_docs``)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    target = match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` (and ``:role:`~target``` as its last component) as a code span."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
