"""The HTML report: a self-contained static site, a sortable leaderboard and a page per run.

`write_site` writes `index.html` (one row per run: model, activation, training method, ε,
clean accuracy, each attack's, worst case, the AutoAttack of the suite, corruptions mean,
image-passes per test image, masking flags and provenance; sortable by any column, numbers
as numbers, and filtered by a text box) and `runs/<name>/index.html` per run (its numbers,
per-class and ε-curve figures as SVG files beside it, the training curves when the run has a
training history, the masking checks with their explanations, and the commands that reproduce
it). Nothing is fetched when the site is viewed.

Every text from the store is escaped (`html_assets.text`) and names used in file names are
reduced to a slug with a hash (`run_folder`); the only script is a fixed one that reads cells.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from robeval.checkpoints import atomic_write_text, remove_stale_temporaries
from robeval.report.html_assets import DASH, facts_list, page, percent, text
from robeval.report.html_run import run_page
from robeval.report.leaderboard import RunEntry

RUNS = "runs"   # the folder of the run pages, under the report folder
SLUG_LENGTH = 40


@dataclass(frozen=True)
class Column:
    """A leaderboard column: header, whether it sorts as numbers, and its cell per entry."""

    header: str
    numeric: bool
    cell: Callable[[RunEntry], tuple[str, float | None]]   # (HTML, sort value or None)
    note: str = ""


def run_folder(entry: RunEntry) -> str:
    """The run page's folder name: run id, a slug of the model name and a hash of both."""
    slug = re.sub(r"[^a-z0-9]+", "-", entry.model.lower()).strip("-")[:SLUG_LENGTH].strip("-")
    digest = hashlib.sha256(f"{entry.run_id}\0{entry.model}".encode()).hexdigest()[:10]
    return "-".join(part for part in (f"run{entry.run_id}", slug, digest) if part)


def _number_cell(value: float | None, shown: str | None = None) -> tuple[str, float | None]:
    return (text(shown) if shown is not None else percent(value)), value


def _corruptions_cell(entry: RunEntry) -> tuple[str, float | None]:
    """The corruptions mean, with the types × severities it covers when not the full grid."""
    shown, value = _number_cell(entry.corruptions)
    if entry.corruptions_coverage and entry.corruptions is not None:
        shown += f' <span class="muted">({text(entry.corruptions_coverage)})</span>'
    return shown, value


def _model_cell(entry: RunEntry) -> tuple[str, None]:
    link = f'<a href="{RUNS}/{run_folder(entry)}/index.html">{text(entry.model)}</a>'
    marker = f' <span class="badge unfinished">{text(entry.unfinished)}</span>' if entry.unfinished else ""
    return link + marker, None


def _autoattack_cell(entry: RunEntry) -> tuple[str, float | None]:
    found = entry.autoattack()
    if found is None or entry.unfinished:
        return DASH, None
    spec, accuracy = found
    name = spec.partition("(")[0] or spec
    return f'{percent(accuracy)} <span class="muted" title="{text(spec)}">{text(name)}</span>', accuracy


def _flags_cell(entry: RunEntry) -> tuple[str, float | None]:
    if not entry.checks:
        return '<span class="muted">not run</span>', None
    flags = entry.flags()
    if not flags:
        return '<span class="badge ok">none</span>', 0
    return " ".join(f'<span class="badge flag">{text(flag)}</span>' for flag in flags), len(flags)


def _provenance_cell(entry: RunEntry) -> tuple[str, None]:
    facts = entry.provenance
    parts = [facts["checkpoint sha256"][:8], facts["git commit"][:7], facts["robeval version"]]
    title = "; ".join(f"{key}: {value}" for key, value in facts.items())
    return f'<span title="{text(title)}">{text(" · ".join(parts))}</span>', None


def _passes_cell(entry: RunEntry) -> tuple[str, float | None]:
    passes = entry.passes()
    return _number_cell(passes, None if passes is None else f"{passes:.1f}")


def _metric_column(header: str, metric: str) -> Column:
    return Column(header, True, lambda e: _number_cell(e.accuracy(metric)))


def columns(entries: list[RunEntry]) -> list[Column]:
    """The leaderboard's columns for these runs: one per attack that any of them ran."""
    attacks = list(dict.fromkeys(spec for entry in entries for spec in entry.attacks))
    return [
        Column("run", True, lambda e: (str(e.run_id), e.run_id)),
        Column("model", False, _model_cell),
        Column("activation", False, lambda e: (text(e.activation or DASH), None)),
        Column("training", False, lambda e: (text(e.method or DASH), None)),
        Column("ε", True, lambda e: (text(e.setup["ε"]), e.eps)),
        _metric_column("clean", "clean"),
        *(_metric_column(spec, spec) for spec in attacks),
        _metric_column("worst case", "worst case"),
        Column("AutoAttack", True, _autoattack_cell),
        Column("corruptions", True, _corruptions_cell,
               "mean accuracy over the suite's corruptions (with the part measured when not all)"),
        Column("passes/img", True, _passes_cell, "image-passes per test image, all attacks together"),
        Column("flags", True, _flags_cell, "gradient-masking checks that raised a flag"),
        Column("provenance", False, _provenance_cell,
               "checkpoint sha256 · git commit · robeval version (hover a cell for all)"),
    ]


def _best(entries: list[RunEntry], column: Column) -> float | None:
    if not column.numeric or column.header in ("run", "ε", "passes/img", "flags"):
        return None
    values = [round(value, 4) for entry in entries if (value := column.cell(entry)[1]) is not None]
    return max(values) if values else None


def _row(entry: RunEntry, order: int, table: list[Column], best: list[float | None]) -> str:
    cells = []
    for column, top in zip(table, best, strict=True):
        shown, value = column.cell(entry)
        classes = ["num"] * column.numeric + [column.header] * (column.header in ("model", "provenance"))
        classes += ["best"] * (top is not None and value is not None and round(value, 4) == top)
        sort = f' data-sort="{"" if value is None else repr(float(value))}"' if column.numeric else ""
        cells.append(f'<td class="{" ".join(classes)}"{sort}>{shown}</td>')
    state = ' class="unfinished"' if entry.unfinished else ""
    return f'<tr data-order="{order}"{state}>{"".join(cells)}</tr>'


def _ranked(entries: list[RunEntry]) -> list[RunEntry]:
    """Finished runs by worst-case accuracy, best first; then unfinished ones, by run id."""
    def key(entry: RunEntry):
        worst = entry.accuracy("worst case")
        return (bool(entry.unfinished), -(worst if worst is not None else -1.0), entry.run_id)
    return sorted(entries, key=key)


def header_label(name: str) -> str:
    """A column header as HTML: an attack's options, if any, on a second, smaller line."""
    base, bracket, options = name.partition("(")
    if not bracket or not base:
        return text(name)
    return f'{text(base)}<span class="options">({text(options)}</span>'


def _header(column: Column, sorted_by: str) -> str:
    kind = "number" if column.numeric else "text"
    state = ' aria-sort="descending"' if column.header == sorted_by else ""
    classes = ' class="num"' if column.numeric else ""
    title = f' title="{text(column.note)}"' if column.note else ""
    return (f'<th scope="col" data-type="{kind}"{state}{classes}{title}>'
            f'<button type="button">{header_label(column.header)}</button></th>')


def leaderboard_table(entries: list[RunEntry]) -> str:
    """The leaderboard as an HTML table, ranked by worst-case accuracy."""
    table = columns(entries)
    ranked = _ranked(entries)
    best = [_best(ranked, column) for column in table]
    head = "".join(_header(column, "worst case") for column in table)
    body = "\n".join(_row(entry, order, table, best) for order, entry in enumerate(ranked))
    return (f'<div class="scroll"><table id="leaderboard">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


LEADERBOARD_NOTE = (
    "Accuracy in % on the first n test images of each run, best of each column in bold. Attack "
    "columns: robust accuracy under that attack (in cascade mode, under it and every earlier "
    "attack of the suite); worst case: robust under every attack of the suite. AutoAttack: the "
    "suite's AutoAttack (aa or aa-fast) and its accuracy. Corruptions: mean accuracy over the "
    "suite's corruptions, with the types × severities measured when not all 15 × 5 (such a mean "
    "is not comparable with a full one), — where none were run. Passes/img: image-passes through "
    "the model per "
    "test image, all attacks together. Flags: the gradient-masking checks that raised a flag (see "
    "each run's page). Provenance: checkpoint sha256, git commit and robeval version. Click a "
    "column header to sort; type to filter.")
UNFINISHED_NOTE = ("Rows marked unfinished are evaluations that did not finish: they show no "
                   "numbers. Rerun the command on their page to finish them.")


def index_page(title: str, provenance: dict[str, str], entries: list[RunEntry]) -> str:
    """The leaderboard page: title, provenance, filter box, table and how to read it."""
    notes = LEADERBOARD_NOTE + (f" {UNFINISHED_NOTE}" if any(e.unfinished for e in entries) else "")
    body = (f"<h1>{text(title)}</h1>\n<p class=\"subtitle\">Leaderboard of {len(entries)} "
            f"evaluation run{'s' * (len(entries) != 1)}</p>\n{facts_list(provenance)}\n"
            '<div class="controls"><label for="filter">Filter</label>'
            '<input id="filter" type="search" placeholder="model, activation, attack, flag…" '
            'autocomplete="off"><span id="count" class="count"></span></div>\n'
            f"{leaderboard_table(entries)}\n<p class=\"note\">{text(notes)}</p>")
    return page(title, body, script=True, wide=True)


def write_site(title: str, provenance: dict[str, str], entries: list[RunEntry], out: Path) -> Path:
    """Write index.html and one page (with its figures) per run under `out`; returns index.html."""
    for entry in entries:
        folder = out / RUNS / run_folder(entry)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        atomic_write_text(folder / "index.html", run_page(entry, folder))
    path = out / "index.html"
    atomic_write_text(path, index_page(title, provenance, entries))
    return path
