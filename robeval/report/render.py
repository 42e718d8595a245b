"""Render a report: Markdown with PNG figures, LaTeX tables (booktabs), and a PDF.

The PDF is drawn with matplotlib's PDF backend (no LaTeX installation needed): a title page with
provenance, one page per table, one page per figure with its caption, and the gradient-masking
flags of every run. Everything is a function of the store's contents, so the same store gives
the same report (timestamps come from the runs, not from the clock).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from robeval.checkpoints import atomic_output, atomic_write_text  # noqa: E402
from robeval.report.tables import Table, to_latex, to_markdown  # noqa: E402

PAGE = (8.27, 11.69)  # A4 portrait, inches


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
    lines += [f"- **{key}**: {value}" for key, value in report.provenance.items()] + [""]
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
    lines += [f"- {flag}" for flag in report.flags] or ["No check raised a flag."]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_latex(report: Report, out: Path) -> Path:
    """tables.tex: every table as a booktabs `table` environment."""
    blocks = [to_latex(table, label=f"tab:{index}") for index, table in enumerate(report.tables)]
    path = out / "tables.tex"
    atomic_write_text(path, "% \\usepackage{booktabs}\n" + "\n\n".join(blocks) + "\n")
    return path


def _text_page(title: str, lines: list[str]) -> Figure:
    figure = Figure(figsize=PAGE)
    figure.text(0.08, 0.94, title, fontsize=16, weight="bold", va="top")
    body = "\n".join(textwrap.fill(line, 95) for line in lines)
    figure.text(0.08, 0.90, body, fontsize=9, va="top", family="monospace")
    return figure


def _table_page(table: Table) -> Figure:
    figure = Figure(figsize=PAGE)
    figure.text(0.08, 0.95, table.title, fontsize=12, weight="bold", va="top", wrap=True)
    axes = figure.add_axes((0.04, 0.10, 0.92, 0.80))
    axes.axis("off")
    cells = table.cells.astype(str)
    index_name = str(cells.index.name or "")
    rows = [[str(label), *values] for label, values in zip(cells.index, cells.values.tolist(), strict=True)]
    drawn = axes.table(cellText=rows, colLabels=[index_name, *map(str, cells.columns)],
                       loc="upper center", cellLoc="center")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(7)
    drawn.auto_set_column_width(list(range(len(cells.columns) + 1)))
    for (row, column), cell in drawn.get_celld().items():
        if row >= 1 and column >= 1 and bool(table.bold.iat[row - 1, column - 1]):
            cell.get_text().set_weight("bold")
    if table.notes:
        figure.text(0.08, 0.06, table.notes, fontsize=8, style="italic", wrap=True)
    return figure


CAPTION_INCHES = 0.7  # space added below a figure for its caption in the PDF


def _figure_page(section: Section) -> Figure:
    """The figure with its caption in a band added below it (vector, as drawn)."""
    figure = section.figure
    width, height = figure.get_size_inches()
    figure.set_size_inches(width, height + CAPTION_INCHES)
    band = CAPTION_INCHES / (height + CAPTION_INCHES)
    engine = figure.get_layout_engine()
    if engine is not None and hasattr(engine, "set"):
        engine.set(rect=(0, band, 1, 1 - band))
    figure.text(0.5, band * 0.45, textwrap.fill(section.caption, 110), ha="center", va="center",
                fontsize=8, style="italic")
    return figure


def write_pdf(report: Report, out: Path) -> Path:
    """report.pdf: title page, tables, figures with captions, masking flags."""
    path = out / "report.pdf"
    # TrueType fonts keep the text selectable and searchable in the PDF.
    with atomic_output(path) as buffer, matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(
            buffer, metadata={"Title": report.title, "Creator": "robeval", "CreationDate": None,
                           "ModDate": None}) as pdf:
        provenance = [f"{key}: {value}" for key, value in report.provenance.items()]
        pdf.savefig(_text_page(report.title, provenance))
        for table in report.tables:
            pdf.savefig(_table_page(table))
        for section in report.figures:
            pdf.savefig(_figure_page(section))
        pdf.savefig(_text_page("Gradient-masking checks", report.flags or ["No check raised a flag."]))
    return path


WRITERS = {"md": write_markdown, "tex": write_latex, "pdf": write_pdf}
