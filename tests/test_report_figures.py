"""Report figures: the curves drawn are the data given (registry activations, history fields,
accuracies in percent), colours follow the activation in every figure, and the output saves as
PNG and as a vector PDF.
"""

from __future__ import annotations

import io
import json
import re

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from robeval.activations import ACTIVATIONS, get_activation
from robeval.errors import RobevalError
from robeval.report import figures
from robeval.report.collect import ReportData


def history(epochs: int = 5, scale: float = 1.0, diagnostics: bool = True,
            collapse_from: int | None = None) -> list[dict]:
    """Synthetic history.jsonl rows with the keys the training loop writes."""
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "loss": 2.0 / epoch, "train_clean_acc": 0.1 * epoch,
               "train_adv_acc": None, "val_clean_acc": 0.3 + 0.05 * epoch,
               "val_pgd_acc": 0.1 + 0.02 * epoch * scale, "lr": 0.1, "eps": 8 / 255, "time": 1.0}
        if diagnostics:
            row.update({"diag_R_fgsm_mean": 0.01 * epoch * scale, "diag_R_fgsm_median": 0.005 * epoch,
                        "diag_grad_l1_mean": 3.0 * epoch ** 2 * scale,
                        "diag_grad_l1_median": 2.0 * epoch,
                        "collapse": collapse_from is not None and epoch >= collapse_from})
        rows.append(row)
    return rows


def report_data() -> ReportData:
    """Three evaluated models with clean and worst-case accuracy and confidence intervals."""
    models = pd.DataFrame([{"run_id": i, "label": f"m{i}", "activation_name": name}
                           for i, name in ((1, "relu"), (2, "gelu"), (3, None))])
    metrics = []
    for i, (clean, robust) in zip((1, 2, 3), ((0.8, 0.4), (0.85, 0.5), (0.7, 0.3)), strict=True):
        metrics.append({"run_id": i, "metric": "clean", "accuracy": clean,
                        "ci_low": clean - 0.02, "ci_high": clean + 0.01})
        metrics.append({"run_id": i, "metric": "pgd", "accuracy": robust + 0.05,
                        "ci_low": np.nan, "ci_high": np.nan})
        metrics.append({"run_id": i, "metric": "worst case", "accuracy": robust,
                        "ci_low": robust - 0.03, "ci_high": robust + 0.04})
    return ReportData(models.set_index("run_id", drop=False), pd.DataFrame(metrics))


def line_colors(ax) -> list[str]:
    return [to_hex(line.get_color()) for line in ax.lines]


def scatter(ax) -> PathCollection:
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    return points


# --- colours -------------------------------------------------------------------------------

def test_every_registered_activation_has_its_own_fixed_colour():
    assert set(figures.ACTIVATION_COLORS) == set(ACTIVATIONS.names())
    assert len(set(figures.ACTIVATION_COLORS.values())) == len(figures.ACTIVATION_COLORS)
    assert figures.activation_color("relu") == "#1f77b4"
    assert figures.activation_color("swish") == figures.activation_color("silu")
    assert figures.activation_color("elu(alpha=2)") == figures.activation_color("ELU")


def test_unknown_activations_get_a_deterministic_hashed_colour():
    color = figures.activation_color("my-activation")
    assert re.fullmatch(r"#[0-9a-f]{6}", color)
    assert color == figures.activation_color("my-activation")
    assert color not in figures.ACTIVATION_COLORS.values()
    assert figures.activation_color(None) == figures.activation_color("unknown")


def test_variants_of_one_activation_differ_by_line_style_not_colour():
    styles = figures.line_styles([("a", "elu"), ("b", "elu(alpha=2)"), ("c", "gelu")])
    assert styles["a"]["color"] == styles["b"]["color"] == figures.activation_color("elu")
    assert styles["a"]["linestyle"] != styles["b"]["linestyle"]
    assert styles["c"]["linestyle"] == "-"
    assert figures.line_styles([("a", "elu")], colors={"a": "#123456"})["a"]["color"] == "#123456"


def test_an_activation_has_the_same_colour_in_different_figures():
    curves = figures.activation_figure(["relu", "gelu"])
    runs = figures.training_curves({"gelu run": ("gelu", history()), "relu run": ("relu", history())})
    robust = figures.robust_vs_clean(report_data())
    assert line_colors(curves.axes[0]) == line_colors(runs.axes[1])[::-1] == ["#1f77b4", "#ff7f0e"]
    faces = [to_hex(c) for c in scatter(robust.axes[0]).get_facecolors()]
    assert faces[:2] == ["#1f77b4", "#ff7f0e"]


# --- figures -------------------------------------------------------------------------------

def test_activation_figure_draws_module_outputs_and_closed_form_derivatives():
    specs = ["relu", "gelu", "elu(alpha=2)"]
    fig = figures.activation_figure(specs, x_range=(-3, 3), points=101)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left, right = fig.axes
    assert [len(left.lines), len(right.lines)] == [3, 3]
    assert (left.get_xlabel(), left.get_ylabel(), right.get_ylabel()) == ("x", "f(x)", "f′(x)")
    assert [t.get_text() for t in left.get_legend().get_texts()] == specs
    x = torch.linspace(-3.0, 3.0, 101, dtype=torch.float64)
    for spec, value_line, slope_line in zip(specs, left.lines, right.lines, strict=True):
        entry, params = get_activation(spec)
        np.testing.assert_allclose(value_line.get_xdata(), x.numpy())
        with torch.no_grad():
            np.testing.assert_allclose(value_line.get_ydata(), entry.module(**params).double()(x).numpy())
        np.testing.assert_allclose(slope_line.get_ydata(), entry.grad(x, **params).numpy())


def test_training_curves_draw_one_line_per_run_in_each_panel_in_percent():
    rows = history()
    rows[2]["val_pgd_acc"] = None
    fig = figures.training_curves({"a": rows, "b": ("gelu", history(scale=2.0))})
    assert len(fig.axes) == 3 and all(len(ax.lines) == 2 for ax in fig.axes)
    assert [ax.get_xlabel() for ax in fig.axes] == ["epoch"] * 3
    assert fig.axes[1].get_ylabel() == fig.axes[2].get_ylabel() == "accuracy (%)"
    loss, clean, pgd = (ax.lines[0].get_ydata() for ax in fig.axes)
    np.testing.assert_allclose(loss, [r["loss"] for r in rows])
    np.testing.assert_allclose(clean, [100 * r["val_clean_acc"] for r in rows])
    assert np.isnan(pgd[2])
    np.testing.assert_allclose(fig.axes[2].lines[1].get_ydata(),
                               [100 * r["val_pgd_acc"] for r in history(scale=2.0)])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]


def test_gradient_quality_curves_plot_the_diagnostics_and_mark_collapse():
    relu, gelu = history(collapse_from=4), history(scale=3.0)
    fig = figures.gradient_quality_curves({"relu": ("relu", relu), "gelu": ("gelu", gelu),
                                           "plain": ("silu", history(diagnostics=False))})
    r_axis, grad_axis = fig.axes
    assert len(r_axis.lines) == len(grad_axis.lines) == 2
    np.testing.assert_allclose(r_axis.lines[0].get_ydata(), [r["diag_R_fgsm_mean"] for r in relu])
    np.testing.assert_allclose(grad_axis.lines[1].get_ydata(), [r["diag_grad_l1_mean"] for r in gelu])
    np.testing.assert_allclose(scatter(grad_axis).get_offsets(),
                               [[r["epoch"], r["diag_grad_l1_mean"]] for r in relu[3:]])
    assert "catastrophic overfitting" in [t.get_text() for t in fig.legends[0].get_texts()]
    median = figures.gradient_quality_curves({"relu": relu}, statistic="median")
    np.testing.assert_allclose(median.axes[0].lines[0].get_ydata(), [r["diag_R_fgsm_median"] for r in relu])


def test_gradient_quality_curves_add_the_batch_accuracies_in_percent_where_recorded():
    rows = history(collapse_from=4)
    for row in rows:
        row.update({"diag_fgsm_acc": 0.5, "diag_pgd10_acc": 0.5 / row["epoch"]})
    fig = figures.gradient_quality_curves({"relu": ("relu", rows), "gelu": ("gelu", history())})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[2:] == ["FGSM accuracy (diagnostics batch)", "PGD-10 accuracy (diagnostics batch)"]
    fgsm, pgd = fig.axes[2], fig.axes[3]
    assert len(fgsm.lines) == len(pgd.lines) == 2 and pgd.get_ylabel() == "accuracy (%)"
    np.testing.assert_allclose(pgd.lines[0].get_ydata(), [50 / r["epoch"] for r in rows])
    assert np.isnan(pgd.lines[1].get_ydata()).all()     # the run that did not record it


def test_gradient_norms_on_a_log_axis_read_as_plain_numbers_and_the_legend_fits():
    runs = {f"activation={name},seed={seed}": (name, history(epochs=30, scale=seed + 1.0))
            for name in ("relu", "gelu") for seed in range(5)}
    fig = figures.gradient_quality_curves(runs)
    FigureCanvasAgg(fig).draw()
    grad_axis = fig.axes[1]
    assert grad_axis.get_yscale() == "log"
    ticks = [t.get_text() for t in grad_axis.get_yticklabels() if t.get_text()]
    assert ticks and not any("$" in t or "mathdefault" in t for t in ticks)
    legend = fig.legends[0].get_window_extent()
    page = fig.bbox
    assert legend.x0 >= page.x0 - 1 and legend.x1 <= page.x1 + 1


def test_a_setting_is_its_label_without_the_seed():
    assert figures.setting_label("activation=relu,seed=3") == "activation=relu"
    assert figures.setting_label("method=igr,seed=12,activation=gelu") == "method=igr,activation=gelu"
    for alone in ("seed=3", "m1", "reseed=3,x=1", "activation=relu,seed=three"):
        assert figures.setting_label(alone) == alone


def test_the_seeds_of_a_setting_share_one_style_and_one_legend_entry():
    runs = {f"activation={name},seed={seed}": (name, history(scale=seed + 1.0))
            for name in ("relu", "gelu") for seed in range(17)}
    runs["single,seed=0"] = ("silu", history())
    for fig in (figures.training_curves(runs), figures.gradient_quality_curves(runs)):
        FigureCanvasAgg(fig).draw()
        assert all(len(ax.lines) == len(runs) for ax in fig.axes)     # every seed is still drawn
        lines = fig.axes[0].lines
        relu = {(to_hex(line.get_color()), str(line.get_linestyle())) for line in lines[:17]}
        assert relu == {(figures.activation_color("relu"), "-")}
        assert lines[0].get_linewidth() < lines[-1].get_linewidth()   # one of many is thinner
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == [
            "activation=relu (17 seeds)", "activation=gelu (17 seeds)", "single,seed=0"]
        box, page = legend.get_window_extent(), fig.bbox
        assert box.y0 >= page.y0 - 1 and box.x1 <= page.x1 + 1


def test_robust_vs_clean_marks_the_mean_of_a_settings_seeds():
    models = pd.DataFrame([{"run_id": i, "label": f"activation={name},seed={seed}",
                            "activation_name": name}
                           for i, (name, seed) in enumerate([("relu", 0), ("relu", 1), ("relu", 2),
                                                             ("gelu", 0)], 1)])
    metrics = [{"run_id": i, "metric": metric, "accuracy": value, "ci_low": value - 0.01,
                "ci_high": value + 0.01}
               for i, clean, robust in ((1, 0.4, 0.2), (2, 0.5, 0.3), (3, 0.6, 0.1), (4, 0.45, 0.25))
               for metric, value in (("clean", clean), ("worst case", robust))]
    fig = figures.robust_vs_clean(ReportData(models.set_index("run_id", drop=False),
                                             pd.DataFrame(metrics)))
    ax = fig.axes[0]
    (seeds,) = [c for c in ax.collections if c.get_gid() == "models"]
    (means,) = [c for c in ax.collections if c.get_gid() == "settings"]
    assert len(seeds.get_offsets()) == 4
    np.testing.assert_allclose(means.get_offsets(), [[50, 20]])
    assert [t.get_text() for t in ax.texts] == ["activation=gelu,seed=0"]   # the lone run
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["activation=relu (mean of 3 seeds)"]


def test_robustness_vs_eps_shows_linf_radii_in_units_of_one_over_255():
    points = pd.DataFrame({"label": ["a", "a", "a", "b", "b"],
                           "activation_name": ["relu"] * 3 + ["gelu"] * 2,
                           "eps": [8 / 255, 0.0, 4 / 255, 0.0, 8 / 255],
                           "accuracy": [0.2, 0.8, 0.5, 0.85, 0.3]})
    ax = figures.robustness_vs_eps(points).axes[0]
    assert ax.get_xlabel() == "ε (×1/255)" and len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0, 4, 8])
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [80, 50, 20])
    l2 = figures.robustness_vs_eps(points.assign(eps=[0.5, 0, 0.25, 0, 0.5]), norm="l2").axes[0]
    np.testing.assert_allclose(l2.lines[1].get_xdata(), [0, 0.5])


def test_robust_vs_clean_places_one_point_per_model_with_its_intervals():
    ax = figures.robust_vs_clean(report_data()).axes[0]
    np.testing.assert_allclose(scatter(ax).get_offsets(), [[80, 40], [85, 50], [70, 30]])
    assert [t.get_text() for t in ax.texts] == ["m1", "m2", "m3"]
    bars = figures.robust_clean_points(report_data())
    np.testing.assert_allclose(np.vstack(bars["clean_err"]), [[2, 1]] * 3, atol=1e-9)
    np.testing.assert_allclose(np.vstack(bars["robust_err"]), [[3, 4]] * 3, atol=1e-9)
    pgd = figures.robust_clean_points(report_data(), metric="pgd")
    np.testing.assert_allclose(pgd["robust"], [45, 55, 35])
    assert list(pgd["robust_err"]) == [(0.0, 0.0)] * 3


def test_per_class_accuracy_draws_clean_and_robust_bars_in_percent():
    per_class = pd.DataFrame({"class": [1, 0], "clean": [0.9, 0.8], "robust": [0.5, 0.4]})
    ax = figures.per_class_accuracy(per_class, class_names=["cat", "dog"]).axes[0]
    clean, robust = ax.containers
    assert [bar.get_height() for bar in clean] == pytest.approx([80, 90])
    assert [bar.get_height() for bar in robust] == pytest.approx([40, 50])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]


@pytest.mark.parametrize("make", [
    lambda: figures.activation_figure([]),
    lambda: figures.training_curves({}),
    lambda: figures.training_curves({"a": []}),
    lambda: figures.gradient_quality_curves({"a": history(diagnostics=False)}),
    lambda: figures.robustness_vs_eps(pd.DataFrame(columns=["label", "activation_name", "eps",
                                                            "accuracy"])),
    lambda: figures.robustness_vs_eps(pd.DataFrame({"label": ["a"]})),
    lambda: figures.robust_vs_clean(ReportData(pd.DataFrame(), pd.DataFrame())),
    lambda: figures.robust_vs_clean(report_data(), metric="apgd-ce"),
    lambda: figures.per_class_accuracy(pd.DataFrame(columns=["class", "clean", "robust"])),
], ids=["activations", "histories", "empty-history", "no-diagnostics", "eps-empty", "eps-columns",
        "no-models", "unknown-metric", "per-class"])
def test_empty_or_unusable_input_is_a_one_line_error(make):
    with pytest.raises(RobevalError) as info:
        make()
    assert "\n" not in str(info.value)


# --- output --------------------------------------------------------------------------------

def all_figures() -> list[Figure]:
    per_class = pd.DataFrame({"class": range(3), "clean": [0.9, 0.8, 0.7], "robust": [0.5, 0.4, 0.3]})
    runs = {"relu": ("relu", history(collapse_from=4)), "gelu": ("gelu", history(scale=2.0))}
    points = pd.DataFrame({"label": ["a", "a"], "activation_name": ["relu"] * 2, "eps": [0, 8 / 255],
                           "accuracy": [0.8, 0.4]})
    return [figures.activation_figure(["relu", "softplus", "silu", "gelu", "elu(alpha=2)", "smoothrelu"]),
            figures.training_curves(runs), figures.gradient_quality_curves(runs),
            figures.robustness_vs_eps(points), figures.robust_vs_clean(report_data()),
            figures.per_class_accuracy(per_class)]


def test_figures_save_as_png_and_as_a_vector_pdf():
    pdf = io.BytesIO()
    with mpl.rc_context({"pdf.compression": 0}), PdfPages(pdf) as pages:
        for fig in all_figures():
            png = io.BytesIO()
            FigureCanvasAgg(fig).print_png(png)
            assert png.getvalue().startswith(b"\x89PNG") and len(png.getvalue()) > 10_000
            pages.savefig(fig)
    content = pdf.getvalue()
    assert content.startswith(b"%PDF") and len(re.findall(rb"/Type /Page\b", content)) == 6
    assert b"/Subtype /Image" not in content
    assert len(re.findall(rb"[\d.]+ [\d.]+ l\n", content)) > 100


def test_load_histories_reads_each_history_file_once(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in history(3)))
    models = pd.DataFrame([
        {"run_id": 1, "label": "m", "activation": "gelu", "history": str(path)},
        {"run_id": 2, "label": "m", "activation": "gelu", "history": str(path)},
        {"run_id": 3, "label": "n", "activation": "relu", "history": None},
    ])
    loaded = figures.load_histories(models)
    assert list(loaded) == ["m"] and loaded["m"][0] == "gelu" and loaded["m"][1] == history(3)
