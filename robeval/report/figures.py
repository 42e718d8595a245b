"""Report figures: activations, training curves, gradient quality, robustness and per-class plots.

Every function returns a `matplotlib.figure.Figure` built without pyplot's global state, sized
for one text column of a page (6.5 in wide) and drawn with vector artists only, so that a PDF
keeps lines as paths. Each activation has one colour in every figure (`activation_color`);
runs that share an activation are told apart by line style. Accuracies are drawn in percent.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, NullFormatter

from robeval.activations import ACTIVATIONS, get_activation
from robeval.attacks.steps import get_norm
from robeval.checkpoints import read_jsonl
from robeval.diagnostics.explain import quantity_unit
from robeval.errors import RobevalError
from robeval.report.collect import ReportData
from robeval.spec import parse_spec

WIDTH = 6.5  # inches: one text column of a single-column page (two columns of a two-column one)
PANEL_HEIGHT = 2.5

# A fixed colour per registered activation: matplotlib's tab10 palette, then two dark extras.
ACTIVATION_COLORS = {
    "relu": "#1f77b4",                 # blue
    "gelu": "#ff7f0e",                 # orange
    "silu": "#2ca02c",                 # green
    "softplus": "#d62728",             # red
    "parametric-softplus": "#9467bd",  # purple
    "elu": "#8c564b",                  # brown
    "smoothrelu": "#e377c2",           # pink
    "tanh": "#7f7f7f",                 # grey
    "celu": "#bcbd22",                 # olive
    "leakyrelu": "#17becf",            # cyan
    "prelu": "#393b79",                # indigo
    "selu": "#000000",                 # black
}
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))
CLASS_COLORS = {"clean": "#a6a6a6", "robust": "#3b3b3b"}
STYLE = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "lines.linewidth": 1.4, "lines.markersize": 4,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False,
}
ACCURACY_LABEL = "accuracy (%)"
Histories = Mapping[str, "Sequence[dict] | tuple[str | None, Sequence[dict]]"]


# --- colours and styles --------------------------------------------------------------------

def activation_name(spec: str | None) -> str:
    """The registered name of an activation spec (`swish` → silu, `elu(alpha=2)` → elu).

    Names the registry does not know are returned lower-cased; None is 'unknown'.
    """
    if _missing(spec):
        return "unknown"
    text = str(spec).strip()
    try:
        name = parse_spec(text)[0]
        return ACTIVATIONS.resolve(name)
    except RobevalError:
        return text.lower()


def _missing(spec) -> bool:
    return spec is None or (isinstance(spec, float) and math.isnan(spec))


def _hashed_color(name: str) -> str:
    """A deterministic, print-dark colour for a name outside the fixed mapping."""
    digest = hashlib.md5(name.encode()).digest()
    hue = int.from_bytes(digest[:4], "big") / 2**32
    saturation = 0.55 + 0.3 * digest[4] / 255
    value = 0.5 + 0.25 * digest[5] / 255
    return to_hex(colorsys.hsv_to_rgb(hue, saturation, value))


def activation_color(name: str | None) -> str:
    """The colour of an activation (name, alias or spec) in every figure, as '#rrggbb'."""
    key = activation_name(name)
    return ACTIVATION_COLORS.get(key) or _hashed_color(key)


def line_styles(items: Sequence[tuple[str, str | None]],
                colors: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Plot keywords (color, linestyle) per key of `items`, pairs of (key, activation spec).

    The colour is the activation's (or `colors[key]` when given; a key without activation is
    coloured as a name of its own); keys sharing an activation take successive line styles in
    the order given.
    """
    styles, seen = {}, {}
    for key, spec in items:
        spec = None if _missing(spec) else spec
        group = activation_name(spec) if spec is not None else f"label:{key}"
        count = seen.get(group, 0)
        seen[group] = count + 1
        color = (colors or {}).get(key) or activation_color(spec if spec is not None else key)
        styles[key] = {"color": color, "linestyle": LINESTYLES[count % len(LINESTYLES)]}
    return styles


# --- shared helpers ------------------------------------------------------------------------

# the y-labels of the gradient-quality panels: the papers' formula in mathtext, the unit from
# robeval.diagnostics.explain.QUANTITY_LABELS
R_FGSM_LABEL = r"$R(x, \delta_{\mathrm{FGSM}})$" + f" ({quantity_unit('R_fgsm')})"
GRAD_L1_LABEL = r"$\|\nabla_x L\|_1$" + f" ({quantity_unit('grad_l1')})"
MATH_LABELS = frozenset({R_FGSM_LABEL, GRAD_L1_LABEL})   # robeval's own mathtext, nothing else


def styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under the report's font sizes and grid style."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs) -> Figure:
        with mpl.rc_context(STYLE):
            return literal_names(function(*args, **kwargs))

    return wrapper


def literal_names(fig: Figure) -> Figure:
    """Every text of the figure drawn as written, except robeval's own axis formulas: a run or
    class name holding `$...$` must not be parsed as mathtext (an unknown macro would stop the
    whole report)."""
    for text in fig.findobj(Text):
        if text.get_text() not in MATH_LABELS:
            text.set_parse_math(False)
    return fig


def _figure(ncols: int, nrows: int = 1, width: float = WIDTH,
            height: float = PANEL_HEIGHT) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width, height * nrows), dpi=150, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


# legend text per inch of figure width, a little under what the default font fits, so that the
# columns chosen for the longest label stay inside the figure
LEGEND_CHARS_PER_INCH = 13


def _legend(fig: Figure, axes: Sequence[Axes], n: int, extra: Sequence = ()) -> None:
    """One legend for the figure, below the panels, from the first axes' labelled lines; as many
    columns (at most 4) as the longest label leaves room for in the figure's width."""
    handles, labels = axes[0].get_legend_handles_labels()
    handles, labels = [*handles, *extra], [*labels, *(h.get_label() for h in extra)]
    longest = max((len(label) for label in labels), default=1) + 5   # + the line sample
    fits = int(fig.get_figwidth() * LEGEND_CHARS_PER_INCH // longest)
    fig.legend(handles, labels, loc="outside lower center", ncols=max(1, min(n, 4, fits)))


SEED_PART = re.compile(r"seed=\d+")
SEED_LINE = {"linewidth": 0.8, "alpha": 0.6}   # one seed among several of a setting


def setting_label(label: str) -> str:
    """A run label without its seed part ('activation=relu,seed=3' → 'activation=relu'); a label
    without one, or with nothing else, is returned as it is."""
    parts = label.split(",")
    kept = [part for part in parts if not SEED_PART.fullmatch(part.strip())]
    return ",".join(kept) if kept and len(kept) < len(parts) else label


def by_setting(labels: Sequence[str]) -> dict[str, list[str]]:
    """Run labels grouped by setting (`setting_label`), settings and runs in the order given."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(setting_label(label), []).append(label)
    return groups


def _setting_styles(runs: dict[str, tuple[str | None, list[dict]]],
                    colors: Mapping[str, str] | None) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """The runs grouped by setting, and per run its plot keywords and legend label: the seeds of
    a setting share colour and line style (thinner when there are several), and only the first
    of them is named in the legend, as the setting with its number of seeds."""
    groups = by_setting(list(runs))
    given = {setting: colors[members[0]] for setting, members in groups.items()
             if colors and members[0] in colors}
    shared = line_styles([(setting, runs[members[0]][0]) for setting, members in groups.items()],
                         given)
    styles = {}
    for setting, members in groups.items():
        several = len(members) > 1
        for index, label in enumerate(members):
            name = f"{setting} ({len(members)} seeds)" if several else label
            styles[label] = {**shared[setting], **(SEED_LINE if several else {}),
                             "label": name if index == 0 else "_nolegend_"}
    return groups, styles


def _values(rows: Sequence[dict], key: str, scale: float = 1.0) -> np.ndarray:
    """`key` of each row as floats (None and missing → NaN), times `scale`."""
    out = [row.get(key) for row in rows]
    return np.array([np.nan if v is None else float(v) * scale for v in out], dtype=float)


def _split_history(value) -> tuple[str | None, list[dict]]:
    if isinstance(value, tuple):
        spec, rows = value
        return spec, list(rows)
    return None, list(value)


def _runs(histories: Histories, what: str) -> dict[str, tuple[str | None, list[dict]]]:
    runs = {label: _split_history(value) for label, value in histories.items()}
    runs = {label: (spec, rows) for label, (spec, rows) in runs.items() if rows}
    if not runs:
        raise RobevalError(f"{what}: no training history to plot (every run's history is empty)")
    return runs


def load_histories(models: pd.DataFrame) -> dict[str, tuple[str | None, list[dict]]]:
    """label → (activation spec, history rows) for the runs of `ReportData.models` that have one.

    A history shared by several evaluation runs is read once; a label used by different
    histories gets the run id appended.
    """
    out, paths = {}, set()
    for row in models.to_dict("records"):
        path = row.get("history")
        if not isinstance(path, str) or path in paths:
            continue
        paths.add(path)
        label = row["label"] if row["label"] not in out else f"{row['label']} #{row['run_id']}"
        out[label] = (row.get("activation"), read_jsonl(Path(path)))
    return out


# --- the figures ---------------------------------------------------------------------------

def activation_curves(spec: str, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """f(x) from the registry's module and f'(x) from its closed-form derivative, in float64."""
    entry, params = get_activation(spec)
    module = entry.module(**params).to(torch.float64)
    with torch.no_grad():
        values = module(x)
    return values.numpy(), entry.grad(x, **params).numpy()


@styled
def activation_figure(specs: Sequence[str], x_range: tuple[float, float] = (-4, 4),
                      points: int = 801) -> Figure:
    """Activations f(x) and their first derivatives f′(x) side by side (SAT Figures 1–2)."""
    if not specs:
        raise RobevalError("activation_figure: no activation given (e.g. ['relu', 'gelu'])")
    x = torch.linspace(float(x_range[0]), float(x_range[1]), points, dtype=torch.float64)
    fig, (left, right) = _figure(2)
    styles = line_styles([(spec, spec) for spec in specs])
    for spec in specs:
        values, slopes = activation_curves(spec, x)
        left.plot(x.numpy(), values, label=spec, **styles[spec])
        right.plot(x.numpy(), slopes, label=spec, **styles[spec])
    left.set(xlabel="x", ylabel="f(x)", title="activation")
    right.set(xlabel="x", ylabel="f′(x)", title="first derivative")
    left.legend(loc="upper left")
    return fig


@styled
def training_curves(histories: Histories, colors: Mapping[str, str] | None = None) -> Figure:
    """Training loss, validation clean and validation PGD accuracy per epoch, one line per run.

    `histories` maps a run label to its history rows, or to (activation spec, rows) so that the
    run is coloured by its activation; `colors` (label → colour) overrides either. Runs whose
    labels differ only in `seed=N` share a style and one legend entry (`setting_label`).
    """
    runs = _runs(histories, "training_curves")
    fig, axes = _figure(3)
    groups, styles = _setting_styles(runs, colors)
    panels = (("loss", 1.0, "training loss"), ("val_clean_acc", 100.0, "clean accuracy (val)"),
              ("val_pgd_acc", 100.0, "PGD accuracy (val)"))
    for ax, (key, scale, title) in zip(axes, panels, strict=True):
        for label, (_, rows) in runs.items():
            ax.plot(_values(rows, "epoch"), _values(rows, key, scale), **styles[label])
        ax.set(xlabel="epoch", ylabel="loss" if key == "loss" else ACCURACY_LABEL, title=title)
    _legend(fig, axes, len(groups))
    return fig


# the accuracy under FGSM and PGD-10 on the diagnostics batch, where the history records them:
# catastrophic overfitting shows as PGD-10 accuracy falling while FGSM accuracy holds
BATCH_ACCURACY_PANELS = (("diag_fgsm_acc", "FGSM accuracy (diagnostics batch)"),
                         ("diag_pgd10_acc", "PGD-10 accuracy (diagnostics batch)"))


def _has_diagnostics(rows: Sequence[dict]) -> bool:
    return any(row.get("diag_R_fgsm_mean") is not None or row.get("diag_grad_l1_mean") is not None
               for row in rows)


def _collapse_marker() -> Line2D:
    return Line2D([], [], color="black", marker="X", linestyle="none",
                  label="catastrophic overfitting")


@styled
def gradient_quality_curves(histories: Histories, colors: Mapping[str, str] | None = None,
                            statistic: str = "mean") -> Figure:
    """R(x, δ_FGSM) and ‖∇ₓL‖₁ on the fixed diagnostics batch per epoch, one line per run, and
    below them FGSM and PGD-10 accuracy on that batch where the histories record them.

    Epochs flagged as catastrophic overfitting (`collapse`) are marked with a cross. Runs
    without diagnostics are left out; `statistic` is 'mean' or 'median'. Runs whose labels
    differ only in `seed=N` share a style and one legend entry.
    """
    runs = {label: run for label, run in _runs(histories, "gradient_quality_curves").items()
            if _has_diagnostics(run[1])}
    if not runs:
        raise RobevalError("gradient_quality_curves: no run has gradient diagnostics "
                           "(train with --diagnostics-batch N)")
    accuracy = [(key, 100.0, ACCURACY_LABEL, title) for key, title in BATCH_ACCURACY_PANELS
                if any(row.get(key) is not None for _, rows in runs.values() for row in rows)]
    panels = [(f"diag_R_fgsm_{statistic}", 1.0, R_FGSM_LABEL, "linearisation error"),
              (f"diag_grad_l1_{statistic}", 1.0, GRAD_L1_LABEL, "input-gradient norm"), *accuracy]
    fig, axes = _figure(2, nrows=(len(panels) + 1) // 2)
    groups, styles = _setting_styles(runs, colors)
    for ax in axes[len(panels):]:
        ax.remove()
    for ax, (key, scale, ylabel, title) in zip(axes, panels, strict=False):
        for label, (_, rows) in runs.items():
            _plot_with_collapse(ax, rows, key, styles[label], scale)
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    _log_if_positive(axes[1])
    collapsed = any(row.get("collapse") for _, rows in runs.values() for row in rows)
    _legend(fig, axes, len(groups) + collapsed, [_collapse_marker()] if collapsed else [])
    return fig


def _plot_with_collapse(ax: Axes, rows: Sequence[dict], key: str, style: dict,
                        scale: float = 1.0) -> None:
    epochs, values = _values(rows, "epoch"), _values(rows, key, scale)
    ax.plot(epochs, values, **style)
    flagged = np.array([bool(row.get("collapse")) for row in rows])
    if flagged.any():
        ax.scatter(epochs[flagged], values[flagged], marker="X", s=36, color=style["color"],
                   edgecolors="black", linewidths=0.6, zorder=3)


def _log_if_positive(ax: Axes) -> None:
    data = np.concatenate([line.get_ydata() for line in ax.lines])
    data = data[np.isfinite(data)]
    if data.size and (data > 0).all() and data.max() / data.min() > 20:
        ax.set_yscale("log")
        # plain numbers: the default labels are mathtext, which every figure leaves unparsed
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


@styled
def robustness_vs_eps(points: pd.DataFrame, norm: str = "linf") -> Figure:
    """Robust accuracy (%) against ε, one line per model (columns label, activation_name, eps, accuracy).

    L∞ radii are shown in units of 1/255, L2 radii as they are.
    """
    _require(points, ("label", "activation_name", "eps", "accuracy"), "robustness_vs_eps")
    scale = get_norm(norm).display_scale
    fig, (ax,) = _figure(1, width=WIDTH / 2 + 0.5, height=PANEL_HEIGHT + 0.3)
    labels = list(dict.fromkeys(points["label"]))
    specs = points.groupby("label", sort=False)["activation_name"].first()
    styles = line_styles([(label, specs[label]) for label in labels])
    for label in labels:
        run = points[points["label"] == label].sort_values("eps")
        eps = run["eps"].to_numpy(float) * scale
        ax.plot(eps, run["accuracy"].to_numpy(float) * 100, marker="o", label=label, **styles[label])
    xlabel = "ε (×1/255)" if scale == 255 else "ε (L2)"
    ax.set(xlabel=xlabel, ylabel=f"robust {ACCURACY_LABEL}", ylim=(0, 100))
    ax.legend(loc="best")
    return fig


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RobevalError(f"{what}: missing columns {', '.join(missing)}")
    if frame.empty:
        raise RobevalError(f"{what}: nothing to plot (the table is empty)")


def robust_clean_points(data: ReportData, metric: str = "worst case") -> pd.DataFrame:
    """One row per run with both clean and `metric` accuracy: label, activation, x/y and CI in %."""
    if data.metrics.empty or data.models.empty:
        raise RobevalError("robust_vs_clean: no evaluated models to plot")
    known = list(dict.fromkeys(data.metrics["metric"]))
    if metric not in known:
        raise RobevalError(f"robust_vs_clean: no metric {metric!r}; known: {', '.join(known)}")
    wide = {name: data.metrics[data.metrics["metric"] == name].set_index("run_id")
            for name in ("clean", metric)}
    ids = [i for i in data.models.index if i in wide["clean"].index and i in wide[metric].index]
    if not ids:
        raise RobevalError(f"robust_vs_clean: no run has both clean and {metric!r} accuracy")
    rows = []
    for i in ids:
        clean, robust = wide["clean"].loc[i], wide[metric].loc[i]
        rows.append({"run_id": i, "label": data.models.loc[i, "label"],
                     "activation_name": data.models.loc[i].get("activation_name"),
                     "clean": 100 * clean["accuracy"], "robust": 100 * robust["accuracy"],
                     "clean_err": _errors(clean), "robust_err": _errors(robust)})
    return pd.DataFrame(rows)


def _errors(row: pd.Series) -> tuple[float, float]:
    """(below, above) in percentage points from ci_low/ci_high; 0 where the interval is unknown."""
    low, high, value = row.get("ci_low"), row.get("ci_high"), row["accuracy"]
    below = 0.0 if low is None or pd.isna(low) else max(0.0, 100 * (value - low))
    above = 0.0 if high is None or pd.isna(high) else max(0.0, 100 * (high - value))
    return below, above


@styled
def robust_vs_clean(data: ReportData, metric: str = "worst case") -> Figure:
    """Robust (`metric`) against clean accuracy (%) per model, coloured by activation, with CIs.

    A model alone in its setting is a labelled point with its 95% intervals; the seeds of a
    setting run with several (labels differing only in `seed=N`) are small dots, and their mean
    an outlined marker of the setting's own shape, named in the legend below.
    """
    points = robust_clean_points(data, metric)
    points["setting"] = [setting_label(str(label)) for label in points["label"]]
    sizes = points.groupby("setting", sort=False)["label"].transform("size")
    fig, (ax,) = _figure(1, width=WIDTH / 2 + 0.5, height=PANEL_HEIGHT + 0.7)
    colors = [activation_color(name) for name in points["activation_name"]]
    for point, color, size in zip(points.itertuples(index=False), colors, sizes, strict=True):
        if size > 1:
            continue
        ax.errorbar(point.clean, point.robust, xerr=np.array(point.clean_err).reshape(2, 1),
                    yerr=np.array(point.robust_err).reshape(2, 1), fmt="none", ecolor=color,
                    elinewidth=0.8, alpha=0.7)
        ax.annotate(point.label, (point.clean, point.robust), xytext=(4, 3),
                    textcoords="offset points", fontsize=6.5)
    ax.scatter(points["clean"], points["robust"], c=colors, s=np.where(sizes > 1, 8, 24),
               alpha=np.where(sizes > 1, 0.5, 1.0), zorder=3, gid="models")
    means = _setting_means(ax, points[sizes > 1])
    handles = [Line2D([], [], color=activation_color(n), marker="o", linestyle="none",
                      label=activation_name(n)) for n in dict.fromkeys(points["activation_name"])]
    ax.legend(handles=handles, title="activation", loc="best")
    if means:
        fig.legend(handles=means, loc="outside lower center")
        fig.set_figheight(fig.get_figheight() + 0.2 * len(means))
    ax.set(xlabel=f"clean {ACCURACY_LABEL}", ylabel=f"robust {ACCURACY_LABEL} ({metric})")
    return fig


MEAN_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _setting_means(ax: Axes, seeded: pd.DataFrame) -> list[Line2D]:
    """The mean clean and robust accuracy of each setting's seeds, one outlined marker shape per
    setting; returns their legend entries (settings that share an activation share a colour)."""
    handles = []
    for index, (setting, group) in enumerate(seeded.groupby("setting", sort=False)):
        color = activation_color(group["activation_name"].iloc[0])
        marker = MEAN_MARKERS[index % len(MEAN_MARKERS)]
        ax.scatter([group["clean"].mean()], [group["robust"].mean()], s=44, marker=marker, c=[color],
                   edgecolors="black", linewidths=0.8, zorder=4, gid="settings")
        handles.append(Line2D([], [], color=color, marker=marker, markeredgecolor="black",
                              linestyle="none", label=f"{setting} (mean of {len(group)} seeds)"))
    return handles


@styled
def per_class_accuracy(per_class: pd.DataFrame, class_names: Sequence[str] | None = None,
                       title: str | None = None) -> Figure:
    """Clean and robust accuracy (%) per class as grouped bars (columns class, clean, robust)."""
    _require(per_class, ("class", "clean", "robust"), "per_class_accuracy")
    frame = per_class.sort_values("class")
    names = [class_names[int(c)] if class_names is not None else str(c) for c in frame["class"]]
    fig, (ax,) = _figure(1, height=PANEL_HEIGHT + 0.3)
    x, width = np.arange(len(frame)), 0.4
    for offset, column in ((-width / 2, "clean"), (width / 2, "robust")):
        ax.bar(x + offset, frame[column].to_numpy(float) * 100, width, label=column,
               color=CLASS_COLORS[column])
    rotate = max(map(len, names)) > 4
    ax.set_xticks(x, names, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  rotation_mode="anchor")
    ax.set(ylabel=ACCURACY_LABEL, ylim=(0, 100), xlabel="class", title=title or "")
    ax.grid(axis="x", visible=False)
    fig.legend(loc="outside right upper")
    return fig
