"""report.md in a few plain lines, for a console (``kd-probe demo`` prints them after training).

:func:`~kd_probe.apps.report.write.write_report` fills a :class:`Digest` from the same numbers it writes into
report.md: the warnings above the verdicts, one line per hypothesis (or per KD method), and a few key numbers —
never by reading the Markdown back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Digest"]


@dataclass
class Digest:
    """The report's short form.

    Attributes:
        warnings: the report's warnings (near-chance runs, runs without foreground knowledge points), plain text.
        hypotheses: one line per hypothesis H1–H3 (per KD method when the report compares several).
        summary: a few key numbers, distilled vs baseline, with the difference of these runs.
        summary_title: what the key numbers are.
        figures: the figures drawn beside report.md.
        path: report.md, once written.
    """

    warnings: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    summary_title: str = "Key numbers (distilled vs baseline, all probe images; differences of these runs)"
    figures: list[Path] = field(default_factory=list)
    path: Path | None = None

    def lines(self) -> list[str]:
        """The verdicts (the warnings first), then the key numbers, then where the full report is: plain text,
        no Markdown."""
        lines = ["The paper's hypotheses:", *(f"  Warning: {w}" for w in self.warnings)]
        lines += [f"  {line}" for line in self.hypotheses or ["not judged (see the full report)"]]
        if self.summary:
            lines += ["", f"{self.summary_title}:", *(f"  {line}" for line in self.summary)]
        if self.path is not None:
            lines += ["", f"Full report: {self.path}"]
            if self.figures:
                names = ", ".join(figure.name for figure in self.figures)
                lines.append(f"Figures: {names} in {self.figures[0].parent}")
        return lines
