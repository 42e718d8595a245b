"""Render a report: Markdown with PNG figures, LaTeX tables (booktabs), and a PDF.

The PDF is typeset by Typst (`robeval.report.typeset`) from the same `Report` the other
writers read: title and provenance, the first table on page 1, further tables and the figures
with captions flowing across pages, and the gradient-masking flags of every run. Everything is
a function of the store's contents, so the same store gives the same report (timestamps come
from the runs, not from the clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from robeval.checkpoints import atomic_output, atomic_write_bytes, atomic_write_text  # noqa: E402
from robeval.report.tables import Table, md_escape, to_latex, to_markdown  # noqa: E402
from robeval.report.typeset import typeset  # noqa: E402


@dataclass
class Section:
    """A figure with its file stem and caption."""

    name: str
    caption: str
    figure: Figure


@dataclass
class Report:
    """Everything a report shows, before rendering."""

    title: str
    provenance: dict[str, str]
    tables: list[Table] = field(default_factory=list)
    figures: list[Section] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)   # one line per raised masking flag


def write_markdown(report: Report, out: Path) -> Path:
    """report.md with the tables and the figures as PNGs beside it."""
    lines = [f"# {report.title}", ""]
    lines += [f"- **{key}**: {md_escape(value)}" for key, value in report.provenance.items()] + [""]
    for table in report.tables:
        lines += [f"## {table.title}", "", to_markdown(table), ""]
        if table.notes:
            lines += [f"*{table.notes}*", ""]
    for section in report.figures:
        png = out / f"{section.name}.png"
        with atomic_output(png) as buffer:
            section.figure.savefig(buffer, format="png", dpi=150, metadata={"Software": None})
        lines += [f"## {section.caption.split('.')[0]}", "", f"![{section.caption}]({png.name})", "",
                  f"*{section.caption}*", ""]
    lines += ["## Gradient-masking checks", ""]
    lines += [f"- {md_escape(flag)}" for flag in report.flags] or ["No check raised a flag."]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_latex(report: Report, out: Path) -> Path:
    """tables.tex: every table as a booktabs `table` environment."""
    blocks = [to_latex(table, label=f"tab:{index}") for index, table in enumerate(report.tables)]
    path = out / "tables.tex"
    atomic_write_text(path, "% \\usepackage{booktabs}\n" + "\n\n".join(blocks) + "\n")
    return path


def write_pdf(report: Report, out: Path) -> Path:
    """report.pdf: the report typeset as a document (title, provenance, tables, figures, flags)."""
    path = out / "report.pdf"
    atomic_write_bytes(path, typeset(report))
    return path


WRITERS = {"md": write_markdown, "tex": write_latex, "pdf": write_pdf}
