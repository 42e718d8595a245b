"""Paper-style tables from `ReportData`, rendered as Markdown pipe tables or booktabs LaTeX.

Formatting (shared by every layout):

- accuracies are percentages with one decimal ("69.4"); a missing or NaN accuracy is "–";
- deltas are percentage points with one decimal in parentheses, signed with "+" or the Unicode
  minus sign "−" (U+2212): "69.4 (+0.6)", "67.6 (−1.2)". They are differences of the displayed
  (rounded) values, so they agree with the printed numbers;
- confidence intervals (`main_table(ci=True)`) are the stored bounds ci_low/ci_high, written
  "69.4 [67.3, 71.5]" (Wilson intervals are not symmetric, so no "±" half-width);
- bold marks the best (highest) value, compared on the displayed values so that ties are all bold;
  a cell with a delta or interval is bold as a whole;
- cells that average several runs (grouped layouts) say so in the table's notes.

`to_latex` turns the Unicode symbols into LaTeX ("−" → $-$, "–" → --, "α" → $\\alpha$,
"✓" → \\checkmark from amssymb, "✗" → $\\times$) and needs `booktabs`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import pandas as pd

from robeval.activations import SMOOTH_GRAD_MODES
from robeval.errors import RobevalError
from robeval.findings import MOST_SEEDS, REPORTED_SEEDS, TARGET_HALF_WIDTH, seeds_for
from robeval.report.collect import TRICKS, ReportData, metric_order
from robeval.results import corruption_table, mean_corruption_error

DASH = "–"
MINUS = "−"
CHECK, CROSS = "✓", "✗"
EMPTY_STORE = "the store holds no evaluation runs: run `robeval attack` first"

TRICK_NAMES = {"optimizer": "opt", "weight_decay": "wd", "label_smoothing": "ls", "bn_mode": "bn",
               "schedule": "sched", "batch_size": "bs", "warmup_epochs": "warmup",
               "eps_warmup_epochs": "eps-warmup", "epochs": "epochs", "smooth_grad": "smooth-grad"}
PARAM_SYMBOLS = {"alpha": "α", "beta": "β"}
PLAIN_TRICKS = ("activation", "method", "arch")
SG_ATTACKER, SG_OPTIMIZER = "smooth gradient for attacker", "smooth gradient for optimizer"


@dataclass
class Table:
    """A rendered table: display strings, bold marks, caption and notes."""

    title: str                     # caption
    cells: pd.DataFrame            # display strings (index = row labels, columns = headers)
    bold: pd.DataFrame             # same shape, True where the cell is the best of its column
    notes: str = ""                # e.g. what the deltas are relative to


# --- small formatters ----------------------------------------------------------------------

def _missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _pct(value: float) -> float:
    """A fraction as a percentage rounded to the displayed precision."""
    return round(100 * float(value), 1)


def percent(value) -> str:
    """A fraction 0..1 as "69.4"; missing values as "–"."""
    return DASH if _missing(value) else f"{_pct(value):.1f}"


def delta(value, reference) -> str:
    """The difference of two fractions in displayed percentage points: "+0.6", "−1.2"."""
    diff = round(_pct(value) - _pct(reference), 1)
    diff = 0.0 if diff == 0 else diff
    return f"+{diff:.1f}" if diff >= 0 else f"{MINUS}{-diff:.1f}"


def number(value) -> str:
    """A setting value, short: 0.0005 → "5e-4", 0.1 → "0.1", 128.0 → "128", "train" → "train"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    if abs(value) < 1e-2:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def activation_label(name, params, spec=None) -> str | None:
    """ "elu(α=0.5)" from the registry name and parameters; the recorded spec when unparsed."""
    if _missing(name):
        return None if _missing(spec) else str(spec)
    if not isinstance(params, dict) or not params:
        return str(name)
    body = ", ".join(f"{PARAM_SYMBOLS.get(key, key)}={number(value)}" for key, value in params.items())
    return f"{name}({body})"


def _column(models: pd.DataFrame, name: str) -> pd.Series:
    if name in models.columns:
        return models[name]
    return pd.Series([None] * len(models), index=models.index, dtype=object)


def _activations(models: pd.DataFrame) -> pd.Series:
    names, params, specs = (_column(models, c) for c in ("activation_name", "activation_params",
                                                          "activation"))
    labels = [activation_label(n, p, s) for n, p, s in zip(names, params, specs, strict=True)]
    return pd.Series(labels, index=models.index, dtype=object)


def _setting(models: pd.DataFrame, trick: str) -> pd.Series:
    """Display strings of one setting per run (None where not recorded)."""
    if trick == "activation":
        return _activations(models)
    values = _column(models, trick)
    return values.map(lambda v: None if _missing(v) else number(v)).astype(object)


def _setting_label(trick: str, shown: str) -> str:
    return shown if trick in PLAIN_TRICKS else f"{TRICK_NAMES.get(trick, trick)}={shown}"


def differing(models: pd.DataFrame, candidates=TRICKS) -> list[str]:
    """The settings among `candidates` with more than one recorded value across the runs."""
    return [t for t in candidates if _setting(models, t).dropna().nunique() > 1]


# --- data access ---------------------------------------------------------------------------

def _require_runs(data: ReportData) -> None:
    if data.models.empty or data.metrics.empty:
        raise RobevalError(EMPTY_STORE)


def _wide(data: ReportData, value: str = "accuracy") -> pd.DataFrame:
    """One row per model run (models' order), one column per metric; NaN where not measured."""
    return data.accuracy_table(value).reindex(data.models.index)


def _check_metric(data: ReportData, metric: str) -> None:
    known = metric_order(data.metrics)
    if metric not in known:
        raise RobevalError(f"no metric {metric!r} in the evaluation runs; known: {', '.join(known)}")


def _best(values: pd.DataFrame, axis: int) -> pd.DataFrame:
    """True where a value is the highest of its column (axis=0) or row (axis=1), as displayed."""
    shown = values.astype(float).mul(100).round(1)
    top = shown.max(axis=axis)
    return shown.eq(top, axis=1 - axis) & shown.notna()


def _grouped(data: ReportData, keys: pd.DataFrame, metrics: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Mean accuracy per group of runs (rows with a missing key are left out) and run counts."""
    joined = keys.join(_wide(data)[metrics]).dropna(subset=list(keys.columns))
    grouped = joined.groupby(list(keys.columns), sort=False)
    return grouped[metrics].mean(), grouped.size()


def _count_note(counts: pd.Series) -> str:
    most = int(counts.max()) if len(counts) else 0
    return f" Cells with several runs show their mean (up to {most} runs)." if most > 1 else ""


def _at_least_two(found: int, layout: str, what: str) -> None:
    if found < 2:
        raise RobevalError(f"{layout} needs evaluation runs of at least two {what}; found {found}")


# --- main table ----------------------------------------------------------------------------

def model_labels(models: pd.DataFrame) -> pd.Series:
    """Row labels: arch, activation, method and the settings that differ across the runs.

    A run without a recorded training method (a RobustBench or plain checkpoint) keeps its
    `label`; labels that would repeat get their run id appended.
    """
    tricks = {t: _setting(models, t) for t in differing(models)}
    activations = _activations(models)
    labels = []
    for run_id in models.index:
        row = models.loc[run_id]
        method = row.get("method")
        if _missing(method):
            labels.append(str(row.get("label", run_id)))
            continue
        parts = [row.get("arch"), activations[run_id], method]
        parts += [_setting_label(t, shown[run_id]) for t, shown in tricks.items() if shown[run_id]]
        marker = row.get("unfinished")
        parts += [f"[{marker}]"] if isinstance(marker, str) and marker else []
        labels.append(", ".join(str(p) for p in parts if not _missing(p)))
    series = pd.Series(labels, index=models.index, dtype=object)
    repeated = series.duplicated(keep=False)
    return series.where(~repeated, series + [f" (run {i})" for i in models.index])


def _main_metrics(data: ReportData, metrics: list[str] | None) -> list[str]:
    if metrics is None:
        return metric_order(data.metrics)
    for metric in metrics:
        _check_metric(data, metric)
    return list(metrics)


def _main_cell(value, low, high, reference, ci: bool) -> str:
    if _missing(value):
        return DASH
    text = percent(value)
    if reference is not None and not _missing(reference):
        text += f" ({delta(value, reference)})"
    if ci and not (_missing(low) or _missing(high)):
        text += f" [{percent(low)}, {percent(high)}]"
    return text


def main_table(data: ReportData, baseline: int | None = None, ci: bool = False,
               metrics: list[str] | None = None) -> Table:
    """One row per evaluated model; clean, each attack and worst-case accuracy in percent.

    With `baseline` (a run id) the other rows show deltas to it in percentage points; `ci`
    appends the stored confidence interval "[low, high]"; `metrics` picks and orders columns.
    The best value of each column is bold (ties all bold).
    """
    _require_runs(data)
    if baseline is not None and baseline not in data.models.index:
        raise RobevalError(f"baseline run {baseline} is not among the runs: "
                           f"{', '.join(map(str, data.models.index))}")
    columns = _main_metrics(data, metrics)
    values, low, high = (_wide(data, v).reindex(columns=columns) for v in ("accuracy", "ci_low", "ci_high"))
    cells = pd.DataFrame(index=values.index, columns=columns, dtype=object)
    for run_id in values.index:
        for metric in columns:
            reference = None if baseline in (None, run_id) else values.at[baseline, metric]
            cells.at[run_id, metric] = _main_cell(values.at[run_id, metric], low.at[run_id, metric],
                                                  high.at[run_id, metric], reference, ci)
    labels = model_labels(data.models)
    return _table("Clean and robust accuracy (%)", cells, _best(values, axis=0), labels, "model",
                  _main_notes(data, baseline, labels, ci))


def cost_table(data: ReportData, metrics: list[str] | None = None) -> Table:
    """One row per evaluated model; image-passes per test image of each attack, as
    "total (forward+backward)": the cost figure that does not depend on the hardware.

    'clean' is the clean classification alone, 'worst case' all attacks together (not the clean
    pass); a run stored before pass counting shows "–". The cheapest value of each attack
    column is bold.
    """
    _require_runs(data)
    columns = _main_metrics(data, metrics)
    total, forward, backward = (_wide(data, v).reindex(columns=columns)
                                for v in ("passes_per_image", "forward_passes", "backward_passes"))
    n = _wide(data, "n").reindex(columns=columns)
    cells = pd.DataFrame(index=total.index, columns=columns, dtype=object)
    for run_id in total.index:
        for metric in columns:
            value = total.at[run_id, metric]
            cells.at[run_id, metric] = DASH if _missing(value) else (
                f"{value:.1f} ({forward.at[run_id, metric] / n.at[run_id, metric]:.1f}"
                f"+{backward.at[run_id, metric] / n.at[run_id, metric]:.1f})")
    shown = total.drop(columns=["clean"], errors="ignore").astype(float).round(1)
    cheapest = (shown.eq(shown.min(axis=0), axis=1) & shown.notna()).reindex(columns=columns)
    return _table("Cost: image-passes per test image (forward+backward)", cells, cheapest,
                  model_labels(data.models), "model",
                  "Passes through the model per test image, counted at the model boundary "
                  "(a forward on 64 images is 64); bold: cheapest of each attack column.")


def _main_notes(data: ReportData, baseline, labels: pd.Series, ci: bool) -> str:
    notes = "Accuracy in %; bold: best of each column."
    if baseline is not None:
        notes += f" Deltas in percentage points relative to {labels[baseline]} (run {baseline})."
    if ci:
        notes += " [low, high]: the stored confidence interval (Wilson, 95% by default)."
    if "unfinished" in data.models and (data.models["unfinished"] != "").any():
        notes += (" Rows marked [unfinished: ...] are evaluations that did not finish: their "
                  "figures cover only the committed batches and are not results.")
    return notes


def _table(title: str, cells: pd.DataFrame, bold: pd.DataFrame, labels, index_name: str,
           notes: str) -> Table:
    cells, bold = cells.copy(), bold.reindex_like(cells).eq(True)
    cells.index = bold.index = pd.Index(list(labels), name=index_name)
    return Table(title, cells.astype(object), bold, notes)


# --- common corruptions -------------------------------------------------------------------

CORRUPTION_NOTE = ("Common corruptions (CIFAR-10-C's 15 types, severities 1–5) are not an adversarial "
                   "threat: every test image counts, clean-correct or not, and they are not part of the "
                   "worst case.")


def _corruption_runs(data: ReportData) -> list[int]:
    """The runs with corruption results, in the models' order."""
    found = set(data.corruptions["run_id"])
    return [run_id for run_id in data.models.index if run_id in found]


def corruption_tables(data: ReportData, baseline: int | None = None) -> list[Table]:
    """The corruption tables (`corruption_type_table`, `corruption_severity_table`), or none when
    no run has corruption results."""
    if not _corruption_runs(data):
        return []
    return [corruption_type_table(data, baseline), corruption_severity_table(data)]


def corruption_type_table(data: ReportData, baseline: int | None = None) -> Table:
    """One row per run with corruption results; accuracy (%) per corruption type (mean over its
    severities), the mean over types and severities (RobustBench's corruption accuracy) and, with
    a `baseline` run that has corruption results, the mCE relative to it. Bold: best of each
    column (lowest mCE)."""
    runs = _corruption_runs(data)
    if not runs:
        raise RobevalError("no run has corruption results: evaluate with --suite corruptions")
    wide = {run_id: corruption_table(data.corruption_summary(run_id)) for run_id in runs}
    types = list(dict.fromkeys(name for table in wide.values() for name in table.index[:-1]))
    values = pd.DataFrame({run_id: {**{name: table["mean"].get(name) for name in types},
                                    "mean": table.loc["mean", "mean"]}
                           for run_id, table in wide.items()}).T.reindex(columns=[*types, "mean"])
    cells = values.apply(lambda column: column.map(percent)).astype(object)
    bold = _best(values, axis=0)
    notes = (f"Accuracy (%) on corrupted test images: each type averaged over its severities; mean: over "
             f"all types and severities. {CORRUPTION_NOTE}")
    if baseline is not None:
        errors, said = _mce_column(data, runs, baseline)
        notes += " " + said
        if errors is not None:
            cells["mCE"] = errors.map(lambda value: DASH if _missing(value) else f"{100 * value:.1f}")
            shown = errors.astype(float).mul(100).round(1)
            bold["mCE"] = shown.eq(shown.min()) & shown.notna()
    labels = model_labels(data.models).loc[runs]
    return _table("Common corruptions: accuracy (%) per type", cells, bold, labels, "model", notes)


def _mce_column(data: ReportData, runs: list[int], baseline: int) -> tuple[pd.Series | None, str]:
    """mCE of each run relative to `baseline`, and the note that explains it (None: no column)."""
    label = model_labels(data.models)[baseline]
    if baseline not in runs:
        return None, f"No mCE: the baseline {label} (run {baseline}) has no corruption results."
    reference = data.corruption_summary(baseline)
    errors = pd.Series({run_id: mean_corruption_error(data.corruption_summary(run_id), reference)
                        for run_id in runs}, dtype=float)
    return errors, (f"mCE (%): Hendrycks & Dietterich's mean corruption error, each type's errors summed "
                    f"over severities and divided by those of {label} (run {baseline}), averaged over "
                    "types; lower is better; – where the baseline lacks a type or severity of the run.")


def corruption_severity_table(data: ReportData) -> Table:
    """One row per run with corruption results; accuracy (%) per severity (mean over types), the
    mean over all, and the image-passes per test image of all corruptions together."""
    runs = _corruption_runs(data)
    if not runs:
        raise RobevalError("no run has corruption results: evaluate with --suite corruptions")
    wide = {run_id: corruption_table(data.corruption_summary(run_id)) for run_id in runs}
    severities = sorted({int(column) for table in wide.values() for column in table.columns[:-1]})
    headers = [f"severity {severity}" for severity in severities]
    values = pd.DataFrame({run_id: {**{f"severity {severity}": table.loc["mean"].get(str(severity))
                                       for severity in severities}, "mean": table.loc["mean", "mean"]}
                           for run_id, table in wide.items()}).T.reindex(columns=[*headers, "mean"])
    cells = values.apply(lambda column: column.map(percent)).astype(object)
    passes = [data.corruption_summary(run_id)["passes_per_image"].sum(min_count=1) for run_id in runs]
    cells["passes/image"] = [DASH if _missing(value) else f"{value:.1f}" for value in passes]
    bold = _best(values, axis=0).reindex(columns=cells.columns, fill_value=False)
    notes = ("Accuracy (%) on corrupted test images at each severity, averaged over the run's types; "
             "passes/image: image-passes through the model per test image for all corruptions "
             f"together (one forward per type and severity). {CORRUPTION_NOTE}")
    return _table("Common corruptions: accuracy (%) per severity", cells, bold,
                  model_labels(data.models).loc[runs], "model", notes)


# --- grouped layouts -----------------------------------------------------------------------

def _pair(robust, clean) -> str:
    if _missing(robust) and _missing(clean):
        return DASH
    return f"{percent(robust)} ({percent(clean)})"


def _pairs_grid(means: pd.DataFrame, metric: str, rows: list,
                columns: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells "robust (clean)" and robust values on a rows × columns grid of group means."""
    robust = means[metric].unstack().reindex(index=rows, columns=columns)
    clean = means["clean"].unstack().reindex(index=rows, columns=columns)
    cells = pd.DataFrame([[_pair(r, c) for r, c in zip(rr, cr, strict=True)]
                          for rr, cr in zip(robust.values, clean.values, strict=True)],
                         index=rows, columns=columns, dtype=object)
    return cells, robust


def _metrics_pair(metric: str) -> list[str]:
    return ["clean"] if metric == "clean" else ["clean", metric]


def method_by_activation(data: ReportData, metric: str = "worst case") -> Table:
    """Rows training method, columns activation, cells "robust (clean)" (smoothness report Table 1).

    Bold marks the best robust accuracy of each row: the best activation for that method.
    """
    _require_runs(data)
    _check_metric(data, metric)
    keys = pd.DataFrame({"method": _setting(data.models, "method"),
                         "activation": _activations(data.models)})
    means, counts = _grouped(data, keys, _metrics_pair(metric))
    if means.empty:
        raise RobevalError("method_by_activation needs runs with a recorded training method and "
                           "activation (robeval-trained checkpoints); none of the runs has both")
    _at_least_two(len(means), "method_by_activation", "method/activation combinations")
    rows = list(dict.fromkeys(means.index.get_level_values(0)))
    columns = list(dict.fromkeys(means.index.get_level_values(1)))
    cells, robust = _pairs_grid(means, metric, rows, columns)
    notes = (f"{metric} robust accuracy (clean accuracy) in %; bold: best activation of each "
             f"method.{_count_note(counts)}")
    return _table(f"Robust ({metric}) and clean accuracy (%) by training method and activation",
                  cells, _best(robust, axis=1), rows, "method", notes)


def _parameter_values(models: pd.DataFrame, parameter: str) -> pd.Series:
    params = _column(models, "activation_params")
    return params.map(lambda p: p.get(parameter) if isinstance(p, dict) else None).astype(object)


def parameter_sweep(data: ReportData, activations=("elu", "celu"), parameter: str = "alpha",
                    metric: str = "worst case") -> Table:
    """Rows activation, columns parameter values (sorted), cells "robust (clean)" (SAT Table 2).

    Bold marks the best robust accuracy of each row: the best parameter for that activation.
    """
    _require_runs(data)
    _check_metric(data, metric)
    names = _column(data.models, "activation_name")
    values = _parameter_values(data.models, parameter)
    chosen = names.isin(list(activations)) & values.map(lambda v: not _missing(v))
    if not chosen.any():
        found = ", ".join(sorted({str(n) for n in names.dropna()})) or "none"
        raise RobevalError(f"parameter_sweep needs runs with activation {' or '.join(activations)} "
                           f"with its {parameter} recorded; activations found: {found}")
    keys = pd.DataFrame({"activation": names[chosen], "value": values[chosen].astype(float)})
    means, counts = _grouped(data, keys, _metrics_pair(metric))
    _at_least_two(len(means), "parameter_sweep", f"activation/{parameter} combinations")
    rows = [a for a in activations if a in set(keys["activation"])]
    columns = sorted(set(keys["value"]))
    cells, robust = _pairs_grid(means, metric, rows, columns)
    symbol = PARAM_SYMBOLS.get(parameter, parameter)
    headers = [f"{symbol}={number(v)}" for v in columns]
    cells.columns = robust.columns = headers
    notes = (f"{metric} robust accuracy (clean accuracy) in %; bold: best {parameter} of each "
             f"activation.{_count_note(counts)}")
    return _table(f"Robust ({metric}) and clean accuracy (%) against the activation's {parameter}",
                  cells, _best(robust, axis=1), rows, "activation", notes)


def _with_delta(value, reference) -> str:
    if _missing(value):
        return DASH
    if reference is None or _missing(reference):
        return percent(value)
    return f"{percent(value)} ({delta(value, reference)})"


def smooth_grad_ablation(data: ReportData, metric: str = "worst case") -> Table:
    """SAT Table 1: rows smooth-grad mode (ReLU runs), ✓/✗ for attacker and optimizer, accuracies.

    Deltas in parentheses are relative to the none/none row; bold: best clean and robust value.
    """
    _require_runs(data)
    _check_metric(data, metric)
    if metric == "clean":
        raise RobevalError("smooth_grad_ablation shows clean accuracy already; pick a robust metric")
    modes = _column(data.models, "smooth_grad")
    relu = _column(data.models, "activation_name").eq("relu") & modes.isin(list(SMOOTH_GRAD_MODES))
    if not relu.any():
        raise RobevalError("smooth_grad_ablation needs ReLU runs trained with a recorded smooth-grad "
                           f"mode ({'|'.join(SMOOTH_GRAD_MODES)}); none of the runs has one")
    means, counts = _grouped(data, pd.DataFrame({"mode": modes[relu]}), ["clean", metric])
    _at_least_two(len(means), "smooth_grad_ablation", "smooth-grad modes")
    rows = [m for m in SMOOTH_GRAD_MODES if m in means.index]
    means = means.reindex(rows)
    reference = means.loc["none"] if "none" in rows else None
    cells = pd.DataFrame({
        SG_ATTACKER: [CHECK if SMOOTH_GRAD_MODES[m][0] else CROSS for m in rows],
        SG_OPTIMIZER: [CHECK if SMOOTH_GRAD_MODES[m][1] else CROSS for m in rows],
        **{c: [_with_delta(means.at[m, c], None if reference is None or m == "none" else reference[c])
               for m in rows] for c in ("clean", metric)},
    }, index=rows, dtype=object)
    compared = "the none/none row" if reference is not None else "nothing (no smooth-grad=none run)"
    notes = (f"Accuracy in %; deltas in percentage points relative to {compared}; bold: best of "
             f"each column.{_count_note(counts)}")
    return _table(f"Smooth gradients for the attacker and the optimizer: clean and {metric} "
                  "accuracy (%)", cells, _best(means, axis=0), rows, "smooth-grad", notes)


def _sort_key(value):
    return (isinstance(value, str), value if not isinstance(value, str) else 0, str(value))


def _trick_rows(models: pd.DataFrame, trick: str) -> tuple[pd.Series, list[str]]:
    """Display value per run and the display values in sorted order of the raw values."""
    shown = _setting(models, trick)
    raw = shown if trick == "activation" else _column(models, trick)
    pairs = {s: r for s, r in zip(shown, raw, strict=True) if s is not None}
    order = sorted(pairs, key=lambda s: _sort_key(pairs[s]))
    return shown, order


def tricks_table(data: ReportData, trick: str, metric: str = "worst case") -> Table:
    """Bag of Tricks layout: one row per value of `trick`, columns clean, each attack, worst case.

    Bold: best of each column; the notes name the best value by `metric` and any other setting
    that also differs across these runs.
    """
    _require_runs(data)
    _check_metric(data, metric)
    known = (*TRICKS, *PLAIN_TRICKS)
    if trick not in known:
        raise RobevalError(f"unknown trick {trick!r}; known: {', '.join(known)}")
    shown, order = _trick_rows(data.models, trick)
    if not order:
        raise RobevalError(f"tricks_table needs runs that record {trick}; none of the runs does")
    _at_least_two(len(order), "tricks_table", f"values of {trick}")
    columns = metric_order(data.metrics)
    means, counts = _grouped(data, pd.DataFrame({trick: shown}), columns)
    means = means.reindex(order)
    cells = means.apply(lambda column: column.map(percent)).astype(object)
    labels = [_setting_label(trick, s) for s in order]
    best = means[metric].astype(float).mul(100).round(1).idxmax() if means[metric].notna().any() else None
    others = differing(data.models[shown.notna()], [t for t in known if t != trick])
    notes = "Accuracy in %; bold: best of each column."
    if best is not None:
        notes += f" Best {trick} by {metric}: {_setting_label(trick, best)}."
    if others:
        notes += f" Other settings that also differ across these runs: {', '.join(others)}."
    return _table(f"Clean and robust accuracy (%) by {trick}", cells, _best(means, axis=0), labels,
                  trick, notes + _count_note(counts))


# --- published numbers and findings --------------------------------------------------------

def _published_number(value) -> str:
    return DASH if _missing(value) else f"{float(value):.1f}".replace("-", MINUS)


def _ours(values: list[float]) -> str:
    """Mean over seeds as a percentage, with the seed standard deviation: "34.2 ± 1.3"."""
    if not values:
        return DASH
    mean = sum(values) / len(values)
    if len(values) == 1:
        return percent(mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{percent(mean)} ± {100 * sd:.1f}"


def published_table(rows: list[dict], notes: str = "") -> Table:
    """The paper's numbers beside ours, one row per published row.

    Each row is {"label", "paper": {metric: value in %}, "ours": {metric: [accuracy per seed]},
    "seeds": [...]}. Columns: "paper <metric>" per published metric, then "ours <metric>" per
    metric we measured (mean ± seed standard deviation), then the seeds counted.
    """
    if not rows:
        raise RobevalError("published_table needs at least one published row")
    paper_metrics = list(dict.fromkeys(m for row in rows for m in row["paper"]))
    our_metrics = list(dict.fromkeys(m for row in rows for m in row["ours"]))
    body = {}
    for row in rows:
        cells = {f"paper {m}": _published_number(row["paper"].get(m)) for m in paper_metrics}
        cells.update({f"ours {m}": _ours(row["ours"].get(m, [])) for m in our_metrics})
        cells["seeds"] = str(len(row["seeds"]))
        body[row["label"]] = cells
    frame = pd.DataFrame.from_dict(body, orient="index").astype(object)
    frame.index.name = "cell"
    bold = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    notes = ("Accuracy in %. Ours: mean ± standard deviation over the finished seeds; robust is the "
             "paper's headline robustness, worst case is ours over the whole suite. " + notes).strip()
    return Table("Published numbers beside ours", frame, bold, notes)


def _signed(value: float | None) -> str:
    if _missing(value):
        return DASH
    shown = round(float(value), 1) + 0.0
    return f"+{shown:.1f}" if shown >= 0 else f"{MINUS}{-shown:.1f}"


def _seeds_needed(measured) -> str:
    """`seeds_for` as a cell: a count, a dash without a spread yet, or a call for more images."""
    needed = seeds_for(measured)
    if needed is None:
        return DASH
    return f"more than {MOST_SEEDS} (more test images)" if needed > MOST_SEEDS else str(needed)


def findings_table(rows: list[dict]) -> Table:
    """Per finding: the paper's difference, ours with its 95% interval, and the verdict.

    Each row is {"finding": robeval.findings.Finding, "paper_delta": float | None,
    "measured": robeval.findings.Measured}; differences are better − worse in percentage points.
    """
    if not rows:
        raise RobevalError("findings_table needs at least one finding")
    body = {}
    for row in rows:
        finding, ours = row["finding"], row["measured"]
        expect = "≈" if finding.expect == "same" else ">"
        interval = (DASH if ours.delta is None else
                    f"{_signed(ours.delta)} [{_signed(ours.low)}, {_signed(ours.high)}]")
        body[finding.claim] = {
            "comparison": f"{_spec(finding.better)} {expect} {_spec(finding.worse)}"
                          + (f" (±{number(finding.margin)})" if finding.expect == "same" else ""),
            "metric (paper / ours)": (finding.metric if finding.paper_metric == finding.metric
                                      else f"{finding.paper_metric} / {finding.metric}"),
            "paper Δ": _signed(row["paper_delta"]),
            "ours Δ [95% CI]": interval,
            "seeds × images": f"{len(ours.seeds)} × {ours.n}" + (" unpaired" if ours.seeds and not ours.paired
                                                                 else ""),
            "verdict": ours.verdict,
            f"seeds for ±{number(TARGET_HALF_WIDTH)}": _seeds_needed(ours),
        }
    frame = pd.DataFrame.from_dict(body, orient="index").astype(object)
    frame.index.name = "finding"
    bold = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    notes = ("Δ: better − worse in percentage points. Ours: mean over seeds of the per-seed difference; "
             "95% interval from the seed spread and the paired per-image differences (Student t at "
             "seeds − 1 degrees of freedom). Verdict (>): contradicted when the interval lies below 0; "
             "smaller than published at this scale when the paper's Δ is positive and the interval "
             "lies below half of it; reproduced when it lies above 0; else inconclusive at this scale. "
             "Verdict (≈): reproduced when the interval lies inside ± the margin, contradicted when "
             "it lies wholly outside it, else inconclusive. Always inconclusive with fewer than 2 "
             "seeds. Each verdict is a one-sided decision at 2.5% error (see robeval/findings.py). "
             f"Seeds for ±{number(TARGET_HALF_WIDTH)}: how many seeds would make the interval at most "
             f"that wide at the spread measured so far (at least {REPORTED_SEEDS}).")
    return Table("Findings: the paper's difference, ours and a verdict", frame, bold, notes)


def _spec(spec: dict) -> str:
    return ", ".join(f"{str(k).rpartition('.')[2]}={v}" for k, v in spec.items())


# --- rendering -----------------------------------------------------------------------------

def _align(column: pd.Series) -> str:
    """ "c" for a column of ✓/✗ marks, "r" for numbers."""
    return "c" if len(column) and column.isin([CHECK, CROSS]).all() else "r"


MARKDOWN_SPECIALS = set("\\`*_[]<>|#~!")   # backslash-escaped, so names cannot format or inject


def md_escape(text: str) -> str:
    """A cell as literal Markdown: one line, every character that could format or open HTML
    escaped (`&` as an entity), so a hostile name shows as typed."""
    flat = " ".join(str(text).splitlines()).replace("&", "&amp;")   # every line break, \x0c and \u2028 too
    return "".join(f"\\{char}" if char in MARKDOWN_SPECIALS else char for char in flat)


def _md_rows(table: Table) -> list[list[str]]:
    """Header and body cells, escaped, bold cells wrapped in **."""
    cells = table.cells
    rows = [[md_escape(cells.index.name or "")] + [md_escape(c) for c in cells.columns]]
    for position, label in enumerate(cells.index):
        texts = [md_escape(cells.iat[position, column]) for column in range(cells.shape[1])]
        marks = table.bold.iloc[position].tolist()
        rows.append([md_escape(label)] + [f"**{t}**" if b else t for t, b in zip(texts, marks, strict=True)])
    return rows


def _md_line(cells: list[str], widths: list[int], aligns: list[str]) -> str:
    pad = {"l": str.ljust, "r": str.rjust, "c": str.center}
    return "| " + " | ".join(pad[a](c, w) for c, w, a in zip(cells, widths, aligns, strict=True)) + " |"


def to_markdown(table: Table) -> str:
    """The cells as a Markdown pipe table, bold cells as **x** (title and notes left to the caller)."""
    rows = _md_rows(table)
    widths = [max(3, *(len(row[i]) for row in rows)) for i in range(len(rows[0]))]
    aligns = ["l"] + [_align(table.cells.iloc[:, i]) for i in range(table.cells.shape[1])]
    rule = {"l": lambda w: "-" * w, "r": lambda w: "-" * (w - 1) + ":",
            "c": lambda w: ":" + "-" * (w - 2) + ":"}
    rule_row = [rule[a](w) for a, w in zip(aligns, widths, strict=True)]
    lines = [rows[0], rule_row, *rows[1:]]
    return "\n".join(_md_line(row, widths, aligns) for row in lines)


LATEX_CHARS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    MINUS: "$-$", DASH: "--", "±": r"$\pm$", "α": r"$\alpha$", "β": r"$\beta$",
    "ε": r"$\varepsilon$", CHECK: r"\checkmark", CROSS: r"$\times$", "·": r"$\cdot$",
}


def latex_escape(text) -> str:
    """`text` with LaTeX's special characters escaped and the table's Unicode symbols spelled out."""
    flat = " ".join(str(text).splitlines())   # every line break, \x0c and \u2028 too
    return "".join(LATEX_CHARS.get(char, char) for char in flat)


def _caption(table: Table) -> str:
    title = table.title if not table.notes or table.title.endswith(".") else f"{table.title}."
    return " ".join(part for part in (title, table.notes) if part)


def to_latex(table: Table, label: str) -> str:
    """A booktabs `table` environment (centred, caption with notes, `label`); bold as \\textbf."""
    cells = table.cells
    align = "l" + "".join(_align(cells[c]) for c in cells.columns)
    header = [latex_escape(cells.index.name or "")] + [latex_escape(c) for c in cells.columns]
    rows = []
    for position, name in enumerate(cells.index):
        row = [latex_escape(name)]
        for column in range(cells.shape[1]):
            text = latex_escape(cells.iat[position, column])
            row.append(rf"\textbf{{{text}}}" if table.bold.iat[position, column] else text)
        rows.append(" & ".join(row) + r" \\")
    caption = latex_escape(_caption(table))
    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule",
        *rows, r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ])
