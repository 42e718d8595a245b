"""Assemble a report from the results store: tables, figures and flags, then render it; the
HTML site is built from the same runs, one entry per run (`robeval.report.leaderboard`)."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robeval.activations import get_activation
from robeval.checkpoints import remove_stale_temporaries
from robeval.diagnostics.explain import GRADIENT_UNITS, R_READING, quantity_label, quantity_unit
from robeval.errors import RobevalError
from robeval.report import DEFAULT_FORMATS, FORMATS, figures, tables
from robeval.report.collect import ReportData, collect, per_class
from robeval.report.html import write_site
from robeval.report.leaderboard import site_entries
from robeval.report.render import WRITERS, Report, Section
from robeval.results import ResultsStore

SITE = "html"   # the format written by `robeval.report.html` rather than a `Report` writer
if set(FORMATS) != {*WRITERS, SITE}:  # the light list that experiments check against, kept honest
    raise ImportError(f"robeval.report.FORMATS {FORMATS} must name the writers {(*WRITERS, SITE)}")
DEFAULT_ACTIVATIONS = ("relu", "softplus", "silu", "gelu", "elu", "smoothrelu")


@dataclass(frozen=True)
class ReportConfig:
    """What goes into a report and where it is written."""

    out: str = "reports/report"
    runs: tuple[int, ...] | None = None     # evaluation run ids (None: every run in the store)
    baseline: int | None = None             # run id the other rows are compared with
    formats: tuple[str, ...] = DEFAULT_FORMATS   # md, pdf, tex; html on request
    ci: bool = False                        # confidence intervals in the main table
    title: str = "robeval report"
    include_unfinished: bool = False        # also unfinished evaluations, marked in every row
    extra_tables: tuple[tables.Table, ...] = ()   # a study's own tables, after the standard ones


def _optional_tables(data: ReportData) -> list[tables.Table]:
    """The grouped layouts that the runs in the store can fill."""
    built = []
    for layout in (tables.method_by_activation, tables.smooth_grad_ablation,
                   tables.parameter_sweep):
        try:
            built.append(layout(data))
        except RobevalError:
            continue
    return built


def _known_activation(spec: str) -> bool:
    try:
        get_activation(spec)
    except RobevalError:
        return False
    return True


def _activation_specs(data: ReportData) -> list[str]:
    """The registered activations of the models (their own parameters), else a default set."""
    specs = data.models.get("activation", pd.Series(dtype=object)).dropna().unique()
    known = sorted({str(spec) for spec in specs if _known_activation(str(spec))})
    return known or list(DEFAULT_ACTIVATIONS)


def gradient_quality_caption() -> str:
    """The caption of the gradient-quality figure, its quantities named as the diagnostics name them."""
    return (f"Linearisation error {quantity_label('R_fgsm')} ({quantity_unit('R_fgsm')}) and "
            f"input-gradient norm {quantity_label('grad_l1')} ({quantity_unit('grad_l1')}) per "
            f"epoch on a fixed training batch ({GRADIENT_UNITS}); crosses mark flagged catastrophic "
            f"overfitting. {R_READING[0].upper()}{R_READING[1:]}.")


def _figures(data: ReportData, store: ResultsStore) -> list[Section]:
    sections = [Section("activations", "Activations and their first derivatives (closed form from "
                        "the registry), as in SAT Figures 1 and 2.",
                        figures.activation_figure(_activation_specs(data)))]
    histories = figures.load_histories(data.models)
    if histories:
        sections.append(Section("training", "Training curves: loss, clean and validation PGD "
                                "accuracy per epoch.", figures.training_curves(histories)))
        try:
            sections.append(Section("gradient-quality", gradient_quality_caption(),
                                    figures.gradient_quality_curves(histories)))
        except RobevalError:
            pass
    if "worst case" in set(data.metrics["metric"]):   # runs of corruptions alone have no worst case
        sections.append(Section("robust-vs-clean", "Robust (worst case over each suite) against clean "
                                "accuracy, with 95% Wilson intervals; the seeds of a setting run with "
                                "several are small dots and their mean the outlined marker.",
                                figures.robust_vs_clean(data)))
    by_eps = data.models.groupby("label")["eps"].nunique()
    if (by_eps > 1).any():
        points = data.models[["label", "activation_name", "eps"]].join(
            data.metrics[data.metrics["metric"] == "worst case"].set_index("run_id")["accuracy"])
        sections.append(Section("robust-vs-eps", "Robust accuracy (worst case) against ε.",
                                figures.robustness_vs_eps(points.reset_index(drop=True))))
    attacked = [run_id for run_id in data.models.index if len(data.models.loc[run_id, "attacks"])]
    if attacked:
        first = int(attacked[0])
        sections.append(Section("per-class", f"Per-class clean and robust accuracy of "
                                f"{data.models.loc[first, 'label']}.",
                                figures.per_class_accuracy(per_class(store, first))))
    return sections


def _flags(data: ReportData) -> list[str]:
    lines = []
    for row in data.models.itertuples(index=False):
        for name, check in sorted((row.checks or {}).items()):
            if not check.get("passed", True):
                lines.append(f"{row.label} (run {row.run_id}): {name}: {check.get('flag')}")
        lines += [f"{row.label} (run {row.run_id}): {note}" for note in getattr(row, "engine_notes", [])]
    return lines


def _provenance(data: ReportData, store: ResultsStore) -> dict[str, str]:
    runs = store.runs().set_index("id").loc[list(data.models.index)]
    finished = runs["finished_at"].dropna()
    versions = data.models["versions"].iloc[0] or {}
    return {
        "date": finished.max().strftime("%Y-%m-%d %H:%M UTC") if len(finished) else "unfinished",
        "robeval version": str(versions.get("robeval", "unknown")),
        "git commit": ", ".join(sorted({str(c) for c in data.models["git_commit"].dropna()})) or "unknown",
        "device": ", ".join(sorted(set(data.models["device"].astype(str)))),
        "runs": ", ".join(str(i) for i in data.models.index),
        "store": str(store.path),
    }


def report_data(store: ResultsStore, config: ReportConfig) -> ReportData:
    """The runs of `config`, checked: at least one, and the baseline among them."""
    data = collect(store, list(config.runs) if config.runs else None, config.include_unfinished)
    if data.models.empty:
        raise RobevalError(f"{store.path} holds no finished evaluation runs: run `robeval attack` "
                           "to the end first (or pass --include-unfinished)")
    if config.baseline is not None and config.baseline not in data.models.index:
        raise RobevalError(f"--baseline {config.baseline} is not among the runs: "
                           f"{', '.join(map(str, data.models.index))}")
    return data


def assemble(store: ResultsStore, config: ReportConfig, data: ReportData | None = None) -> Report:
    """Tables, figures and flags for the runs of `config` (all figures closed after rendering)."""
    data = report_data(store, config) if data is None else data
    main = tables.main_table(data, baseline=config.baseline, ci=config.ci)
    cost = [tables.cost_table(data)] if data.metrics["passes_per_image"].notna().any() else []
    corruptions = tables.corruption_tables(data, config.baseline)
    grouped = _optional_tables(data.finished()) if not data.finished().models.empty else []
    return Report(config.title, _provenance(data, store),
                  [main, *cost, *corruptions, *grouped, *config.extra_tables],
                  _figures(data, store), _flags(data))


def build_report(store: ResultsStore, config: ReportConfig) -> dict[str, Path]:
    """Write the report in each requested format under `config.out`; returns the paths."""
    unknown = set(config.formats) - set(FORMATS)
    if unknown:
        raise RobevalError(f"unknown report format {', '.join(sorted(unknown))}; known: {', '.join(FORMATS)}")
    out = Path(config.out)
    with _report_writes(out):
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
    data = report_data(store, config)
    report = assemble(store, config, data) if set(config.formats) & set(WRITERS) else None
    entries = site_entries(store, data) if SITE in config.formats else []
    with _report_writes(out):
        remove_stale_temporaries(out)  # left by a report killed outright
        return {fmt: write_site(config.title, _provenance(data, store), entries, out) if fmt == SITE
                else WRITERS[fmt](report, out) for fmt in FORMATS if fmt in config.formats}


@contextmanager
def _report_writes(out: Path) -> Iterator[None]:
    """A failed write into the report folder as a one-line error (every file is whole)."""
    try:
        yield
    except OSError as err:
        raise RobevalError(f"cannot write the report to {out} ({err.strerror or err}): pass --out "
                           "with a writable folder, or free disk space") from err
