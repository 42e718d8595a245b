"""Typeset a report as a PDF document with Typst (the `typst` package carries the compiler).

The template `report.typ` lays out any `Report`: title and provenance, every table (the first
on page 1) with its caption, the figures as vector SVG with captions, and the masking flags.
The report travels to the template as JSON data, so no text is ever parsed as markup. Only
the fonts bundled with the compiler are used, so the same report gives the same PDF bytes on
every machine, with no network access.
"""

from __future__ import annotations

import io
import json
from importlib import resources
from typing import TYPE_CHECKING

import matplotlib
import typst
from matplotlib.figure import Figure

from robeval.errors import RobevalError
from robeval.report.tables import Table, _align

if TYPE_CHECKING:   # render imports this module
    from robeval.report.render import Report

TEMPLATE = "report.typ"


def table_data(table: Table) -> dict:
    """A table as plain data: headers, rows of (text, bold) cells, column alignments."""
    cells = table.cells
    rows = []
    for position, label in enumerate(cells.index):
        marks = table.bold.iloc[position].tolist()
        rows.append({"label": str(label),
                     "cells": [{"text": str(cells.iat[position, column]), "bold": bool(marks[column])}
                               for column in range(cells.shape[1])]})
    title, notes = str(table.title), str(table.notes or "")
    if notes and not title.endswith("."):
        title += "."
    return {"title": title, "notes": notes,
            "index_name": str(cells.index.name or ""), "columns": [str(c) for c in cells.columns],
            "aligns": [_align(cells.iloc[:, i]) for i in range(cells.shape[1])], "rows": rows}


def figure_svg(figure: Figure) -> str:
    """A matplotlib figure as SVG text, glyphs drawn as paths, without date or random ids."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "robeval"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def report_data(report: Report) -> dict:
    """Everything the template sets, as JSON-ready data."""
    return {
        "title": str(report.title),
        "provenance": [[str(key), str(value)] for key, value in report.provenance.items()],
        "tables": [table_data(table) for table in report.tables],
        "figures": [{"caption": str(section.caption), "svg": figure_svg(section.figure)}
                    for section in report.figures],
        "flags": [str(flag) for flag in report.flags],
    }


def typeset(report: Report) -> bytes:
    """The report as PDF bytes."""
    template = resources.files("robeval.report").joinpath(TEMPLATE).read_bytes()
    try:
        return typst.compile(template, sys_inputs={"report": json.dumps(report_data(report))},
                             ignore_system_fonts=True)
    except RuntimeError as error:   # typst reports layout failures as RuntimeError subclasses
        raise RobevalError(f"the report PDF could not be typeset ({error}): "
                           f"write the other formats with --format md,tex") from error
