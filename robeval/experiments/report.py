"""An experiment's report: build_report over its runs with the study's own tables (one per grid group,
the published numbers beside ours, a verdict per finding), the per-image flags they rest on, and the
table of cells printed by `robeval run`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from robeval.checkpoints import atomic_write_text
from robeval.errors import RobevalError
from robeval.experiments.grid import (
    config_key,
    grid_groups,
    report_dir,
    setting_key,
    spec_label,
    spec_setting,
)
from robeval.experiments.spec import CellResult, Experiment, published_values
from robeval.findings import measure, paper_delta
from robeval.report import tables
from robeval.report.collect import collect
from robeval.results import ResultsStore, robust_rows


def _baseline(experiment: Experiment, results: list[CellResult]) -> int | None:
    wanted = experiment.report.get("baseline", "first")
    if wanted in (None, "none"):
        return None
    if wanted == "first":
        return results[0].run_id
    for result in results:
        if result.cell.name == wanted:
            return result.run_id
    raise RobevalError(f"report baseline {wanted!r} of {experiment.name} is not a cell: "
                       f"{', '.join(r.cell.name for r in results)}")


def write_report(experiment: Experiment, results: list[CellResult], store: ResultsStore,
                 root: Path) -> dict[str, Path]:
    """build_report over the experiment's runs, with the study's own tables: one per grid group,
    the published numbers beside ours and a verdict per finding."""
    # imported here, not at the top: report.build loads matplotlib (about a second), which
    # loading, listing or checking an experiment does not need
    from robeval.report.build import DEFAULT_FORMATS, ReportConfig, build_report

    report = experiment.report
    formats = report.get("formats", DEFAULT_FORMATS)
    measured = measurements(results, store)
    extra = _group_tables(experiment, results, store) + study_tables(experiment, measured)
    config = ReportConfig(out=str(report_dir(experiment, root) / "report"),
                          runs=tuple(r.run_id for r in results), baseline=_baseline(experiment, results),
                          formats=tuple(formats.split(",") if isinstance(formats, str) else formats),
                          ci=bool(report.get("ci", False)),
                          title=str(report.get("title") or f"{experiment.name}: {experiment.description}"),
                          extra_tables=tuple(extra))
    paths = build_report(store, config)
    section = paper_section(experiment)
    if "md" in paths and section:
        markdown = Path(paths["md"])
        atomic_write_text(markdown, markdown.read_text().rstrip("\n") + "\n\n" + section + "\n")
    return paths


def _group_tables(experiment: Experiment, results: list[CellResult], store: ResultsStore) -> list:
    """A Bag-of-Tricks table per single-key grid group, when the grid has several groups."""
    if len(experiment.grid) < 2:
        return []
    by_config = {config_key(r.cell): r.run_id for r in results if r.run_id is not None}
    built = []
    for group, group_cells in zip(experiment.grid, grid_groups(experiment), strict=True):
        if len(group) != 1:
            continue
        trick = next(iter(group)).rpartition(".")[2]
        ids = list(dict.fromkeys(by_config[key] for key in map(config_key, group_cells) if key in by_config))
        try:
            table = tables.tricks_table(collect(store, ids), trick)
        except RobevalError:
            continue
        table.title = f"One setting at a time: {trick}"
        built.append(table)
    return built


# --- published numbers and findings ----------------------------------------------------------------

Measurements = dict[str, dict[int, dict[str, Any]]]   # setting -> seed -> metric -> per-image flags


def metric_flags(store, run_id: int) -> dict[str, list[bool]]:
    """Per-image flags of every summary row: clean-correct, robust after each attack, worst case."""
    record = store.run_record(run_id)
    frame = store.per_sample(run_id)
    flags = {"clean": frame["clean_correct"].astype(bool).tolist()}
    robust = robust_rows(frame, record.attacks, record.mode)
    flags.update({spec: robust[spec].tolist() for spec in record.attacks})
    flags["worst case"] = frame["robust"].astype(bool).tolist()
    return flags


def flag_series(flags: dict[str, list[bool]], index) -> dict[str, Any]:
    """`metric_flags` as boolean Series by test-image index, with 'robust' as the worst case."""
    series = {metric: pd.Series(values, index=index, dtype=bool) for metric, values in flags.items()}
    series["robust"] = series["worst case"]
    return series


def measured_flags(store: ResultsStore, run_id: int) -> dict[str, Any]:
    """Per-image 0/1 flags by test-image index: clean, each attack, 'worst case' (alias 'robust')."""
    return flag_series(metric_flags(store, run_id), store.per_sample(run_id)["index"].to_numpy())


def measurements(results: list[CellResult], store: ResultsStore) -> Measurements:
    """The finished evaluations of `results`, by setting and seed."""
    measured: Measurements = {}
    for result in results:
        if result.run_id is not None:
            flags = measured_flags(store, result.run_id)
            measured.setdefault(setting_key(result.cell), {})[result.cell.seed] = flags
    return measured


def finding_rows(experiment: Experiment, measured: Measurements) -> list[dict]:
    """Per finding: claim, cells, metric, the paper's difference and ours (`robeval.findings.Measured`)."""
    published = published_values(experiment)
    rows = []
    for finding in experiment.findings:
        better = spec_setting(experiment, finding.better, "finding")
        worse = spec_setting(experiment, finding.worse, "finding")
        flags = []
        for key in (better, worse):
            per_seed = {}
            for seed, metrics in measured.get(key, {}).items():
                if finding.metric not in metrics:
                    raise RobevalError(f"finding {finding.claim!r} of {experiment.name} uses metric "
                                       f"{finding.metric!r}; the evaluations give {', '.join(metrics)}")
                per_seed[seed] = metrics[finding.metric]
            flags.append(per_seed)
        published_delta = paper_delta(finding, published, better, worse)
        rows.append({"finding": finding, "paper_delta": published_delta,
                     "measured": measure(finding, *flags, published=published_delta)})
    return rows


def published_rows(experiment: Experiment, measured: Measurements) -> list[dict]:
    """Per published row: its label, the paper's values (absolute) and ours (accuracy per seed)."""
    published = published_values(experiment)
    rows = []
    for row in (experiment.paper or {}).get("rows") or []:
        key = spec_setting(experiment, row["cell"], "paper row")
        ours: dict[str, list[float]] = {}
        for metrics in measured.get(key, {}).values():
            for metric, flags in metrics.items():
                if metric != "robust":
                    ours.setdefault(metric, []).append(float(flags.mean()))
        rows.append({"label": spec_label(row["cell"]), "paper": published[key], "ours": ours,
                     "seeds": sorted(measured.get(key, {}))})
    return rows


def study_tables(experiment: Experiment, measured: Measurements) -> list:
    """The published numbers beside ours, and the verdict per finding, as report tables."""
    paper = experiment.paper or {}
    built = []
    if paper.get("rows"):
        notes = f"Source: {paper.get('source', 'not given')}."
        if paper.get("note"):
            notes += f" What differs: {paper['note']}"
        built.append(tables.published_table(published_rows(experiment, measured), notes))
    if experiment.findings:
        built.append(tables.findings_table(finding_rows(experiment, measured)))
    return built


def paper_section(experiment: Experiment) -> str:
    """Markdown for a paper block that lists no rows: its source and note ('' otherwise)."""
    paper = experiment.paper
    if not paper or paper.get("rows"):
        return ""
    lines = ["## Published numbers beside ours", "", f"Source: {paper.get('source', 'not given')}.", "",
             "No published figures are listed for these cells: compare the direction of "
             "the changes with the source."]
    if paper.get("note"):
        lines += ["", f"What differs: {paper['note']}"]
    return "\n".join(lines)


# --- the cells table ----------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def cells_table(results: list[CellResult]) -> str:
    """Fixed-width table: cell, status, clean and worst-case accuracy (%)."""
    rows = [("cell", "status", "clean", "worst case")]
    rows += [(r.cell.name, r.status, _pct(r.clean), _pct(r.worst_case)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
