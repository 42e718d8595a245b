"""Report tables: numbers, deltas, bold marks, grouped layouts, Markdown and LaTeX rendering."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from robeval.errors import RobevalError
from robeval.report.collect import ReportData
from robeval.report.tables import (
    Table,
    cost_table,
    main_table,
    method_by_activation,
    number,
    parameter_sweep,
    smooth_grad_ablation,
    to_latex,
    to_markdown,
    tricks_table,
)

NAN = math.nan
TRAINED = {"arch": "resnet18", "method": "pgd", "weight_decay": 5e-4, "label_smoothing": 0.0,
           "bn_mode": "eval", "optimizer": "sgd", "smooth_grad": "none", "epochs": 10}


def model(run_id: int, activation: str = "relu", params: dict | None = None, **facts) -> dict:
    """One models row: a robeval-trained checkpoint unless `facts` say otherwise."""
    return {"run_id": run_id, "label": f"model-{run_id}", **TRAINED, "activation": activation,
            "activation_name": activation, "activation_params": params or {}, **facts}


def make_data(rows: list[dict], accuracy: dict[int, dict[str, float]],
              ci: dict[tuple[int, str], tuple[float, float]] | None = None) -> ReportData:
    """ReportData from model rows and {run_id: {metric: accuracy}} (optional CIs)."""
    models = pd.DataFrame(rows).set_index("run_id", drop=False)
    records = []
    for run_id, values in accuracy.items():
        for metric, value in values.items():
            low, high = (ci or {}).get((run_id, metric), (NAN, NAN))
            records.append({"run_id": run_id, "metric": metric, "accuracy": value, "ci_low": low,
                            "ci_high": high, "correct": NAN, "n": 1000, "seconds": NAN})
    return ReportData(models, pd.DataFrame(records))


def accuracies(clean: float, robust: float, metric: str = "worst case") -> dict[str, float]:
    return {"clean": clean, metric: robust}


@pytest.fixture
def suite_data() -> ReportData:
    """Three runs; run 3's suite lacks apgd-t; apgd-ce ties between runs 1 and 3."""
    rows = [model(1, label_smoothing=0.0),
            model(2, "elu", {"alpha": 0.5}, label_smoothing=0.1),
            model(3, "silu", label_smoothing=0.1)]
    accuracy = {
        1: {"clean": 0.812, "apgd-ce": 0.510, "apgd-t": 0.480, "worst case": 0.470},
        2: {"clean": 0.818, "apgd-ce": 0.506, "apgd-t": 0.490, "worst case": 0.476},
        3: {"clean": 0.800, "apgd-ce": 0.510, "worst case": 0.500},
    }
    ci = {(1, "clean"): (0.790, 0.830), (2, "clean"): (0.796, 0.839)}
    return make_data(rows, accuracy, ci)


# --- cost table ----------------------------------------------------------------------------

def test_cost_table_shows_passes_per_image_and_marks_the_cheapest():
    rows = [model(1), model(2, "elu")]
    passes = {1: {"clean": (100, 0), "aa": (4000, 1000), "worst case": (4000, 1000)},
              2: {"clean": (100, 0), "aa": (300, 200), "worst case": (300, 200)}}
    records = [{"run_id": run_id, "metric": metric, "accuracy": 0.5, "ci_low": NAN, "ci_high": NAN,
                "correct": 50, "n": 100, "seconds": NAN, "forward_passes": fwd, "backward_passes": bwd,
                "passes_per_image": (fwd + bwd) / 100}
               for run_id, values in passes.items() for metric, (fwd, bwd) in values.items()]
    records.append({**records[-1], "run_id": 3, "forward_passes": NAN, "backward_passes": NAN,
                    "passes_per_image": NAN})  # a run stored before pass counting
    data = ReportData(pd.DataFrame([*rows, model(3, "silu")]).set_index("run_id", drop=False),
                      pd.DataFrame(records))
    table = cost_table(data)
    assert list(table.cells.columns) == ["clean", "aa", "worst case"]
    assert table.cells.iloc[0].tolist() == ["1.0 (1.0+0.0)", "50.0 (40.0+10.0)", "50.0 (40.0+10.0)"]
    assert table.cells.iloc[1].tolist() == ["1.0 (1.0+0.0)", "5.0 (3.0+2.0)", "5.0 (3.0+2.0)"]
    assert table.cells.iloc[2].tolist() == ["–", "–", "–"]
    assert table.bold.iloc[:, 1].tolist() == [False, True, False]
    assert not table.bold["clean"].any()
    assert "image-passes" in table.title and "|" in to_markdown(table)


# --- main table ----------------------------------------------------------------------------

def test_main_table_values_and_columns(suite_data):
    table = main_table(suite_data)
    assert list(table.cells.columns) == ["clean", "apgd-ce", "apgd-t", "worst case"]
    assert table.cells.iloc[0].tolist() == ["81.2", "51.0", "48.0", "47.0"]
    assert table.cells.iloc[2].tolist() == ["80.0", "51.0", "–", "50.0"]
    assert table.bold.shape == table.cells.shape


def test_main_table_deltas_relative_to_baseline(suite_data):
    table = main_table(suite_data, baseline=1)
    assert table.cells.iloc[0].tolist() == ["81.2", "51.0", "48.0", "47.0"]
    assert table.cells.iloc[1].tolist() == ["81.8 (+0.6)", "50.6 (−0.4)", "49.0 (+1.0)", "47.6 (+0.6)"]
    assert table.cells.iloc[2].tolist() == ["80.0 (−1.2)", "51.0 (+0.0)", "–", "50.0 (+3.0)"]
    assert "relative to resnet18, relu, pgd, ls=0 (run 1)" in table.notes


def test_main_table_bold_marks_column_best_with_ties(suite_data):
    bold = main_table(suite_data, baseline=2).bold
    expected = [[False, True, False, False],
                [True, False, True, False],
                [False, True, False, True]]
    assert bold.values.tolist() == expected


def test_main_table_confidence_intervals(suite_data):
    plain = main_table(suite_data, ci=True)
    assert plain.cells.iat[0, 0] == "81.2 [79.0, 83.0]"
    assert plain.cells.iat[0, 1] == "51.0"          # no stored interval: value only
    with_delta = main_table(suite_data, baseline=1, ci=True)
    assert with_delta.cells.iat[1, 0] == "81.8 (+0.6) [79.6, 83.9]"
    assert "[low, high]" in with_delta.notes


def test_main_table_labels_show_only_differing_tricks(suite_data):
    labels = list(main_table(suite_data).cells.index)
    assert labels == ["resnet18, relu, pgd, ls=0", "resnet18, elu(α=0.5), pgd, ls=0.1",
                      "resnet18, silu, pgd, ls=0.1"]
    assert not any("wd=" in label or "bn=" in label for label in labels)


def test_main_table_labels_for_other_tricks_and_external_models():
    rows = [model(1, weight_decay=1e-4, bn_mode="eval", smooth_grad="none"),
            model(2, weight_decay=5e-4, bn_mode="train", smooth_grad="attacker"),
            {"run_id": 3, "label": "Carmon2019Unlabeled", "arch": "Carmon2019Unlabeled"},
            model(4, weight_decay=5e-4, bn_mode="train", smooth_grad="attacker")]
    data = make_data(rows, {i: accuracies(0.8, 0.5) for i in (1, 2, 3, 4)})
    labels = list(main_table(data).cells.index)
    assert labels[0] == "resnet18, relu, pgd, wd=1e-4, bn=eval, smooth-grad=none"
    assert labels[1] == "resnet18, relu, pgd, wd=5e-4, bn=train, smooth-grad=attacker (run 2)"
    assert labels[2] == "Carmon2019Unlabeled"
    assert labels[3].endswith("(run 4)")


def test_main_table_nan_and_metric_choice(suite_data):
    suite_data.metrics.loc[(suite_data.metrics["run_id"] == 2)
                           & (suite_data.metrics["metric"] == "clean"), "accuracy"] = NAN
    table = main_table(suite_data, metrics=["worst case", "clean"])
    assert list(table.cells.columns) == ["worst case", "clean"]
    assert table.cells.iat[1, 1] == "–"
    assert not table.bold.iat[1, 1]
    assert table.bold.iat[0, 1]


def test_main_table_errors(suite_data):
    empty = ReportData(pd.DataFrame(), pd.DataFrame(columns=["run_id", "metric", "accuracy"]))
    with pytest.raises(RobevalError, match="no evaluation runs: run `robeval attack` first"):
        main_table(empty)
    with pytest.raises(RobevalError, match="baseline run 9"):
        main_table(suite_data, baseline=9)
    with pytest.raises(RobevalError, match="no metric 'pgd'"):
        main_table(suite_data, metrics=["pgd"])


# --- grouped layouts -----------------------------------------------------------------------

def activation_grid() -> ReportData:
    """2 methods × 4 activations; (pgd, relu) has two runs averaging to 41.0 / 78.0."""
    numbers = {("pgd", "relu"): [(0.78, 0.40), (0.78, 0.42)], ("pgd", "softplus"): [(0.783, 0.412)],
               ("pgd", "silu"): [(0.79, 0.43)], ("pgd", "gelu"): [(0.80, 0.425)],
               ("trades", "relu"): [(0.75, 0.45)], ("trades", "softplus"): [(0.76, 0.44)],
               ("trades", "silu"): [(0.77, 0.45)], ("trades", "gelu"): [(0.74, 0.43)]}
    rows, accuracy = [], {}
    for (method, activation), runs in numbers.items():
        for clean, robust in runs:
            run_id = len(rows) + 1
            rows.append(model(run_id, activation, method=method))
            accuracy[run_id] = accuracies(clean, robust)
    return make_data(rows, accuracy)


def test_method_by_activation_layout():
    table = method_by_activation(activation_grid())
    assert list(table.cells.index) == ["pgd", "trades"]
    assert list(table.cells.columns) == ["relu", "softplus", "silu", "gelu"]
    assert table.cells.loc["pgd"].tolist() == ["41.0 (78.0)", "41.2 (78.3)", "43.0 (79.0)", "42.5 (80.0)"]
    assert table.cells.loc["trades"].tolist() == ["45.0 (75.0)", "44.0 (76.0)", "45.0 (77.0)",
                                                  "43.0 (74.0)"]
    assert table.bold.values.tolist() == [[False, False, True, False], [True, False, True, False]]
    assert "mean" in table.notes


def test_method_by_activation_needs_methods():
    rows = [{"run_id": 1, "label": "a"}, {"run_id": 2, "label": "b"}]
    data = make_data(rows, {1: accuracies(0.8, 0.5), 2: accuracies(0.7, 0.4)})
    with pytest.raises(RobevalError, match="method_by_activation needs runs with a recorded training method"):
        method_by_activation(data)
    single = make_data([model(1)], {1: accuracies(0.8, 0.5)})
    with pytest.raises(RobevalError, match="at least two"):
        method_by_activation(single)


def sweep_data() -> ReportData:
    """elu/celu at α = 1, 0.1, 0.5 (unsorted) plus a relu run that the sweep leaves out."""
    robust = {"elu": {1.0: 0.40, 0.1: 0.42, 0.5: 0.45}, "celu": {1.0: 0.44, 0.1: 0.41, 0.5: 0.43}}
    rows, accuracy = [model(1)], {1: accuracies(0.9, 0.9)}
    for activation, by_alpha in robust.items():
        for alpha, value in by_alpha.items():
            run_id = len(rows) + 1
            rows.append(model(run_id, activation, {"alpha": alpha}))
            accuracy[run_id] = accuracies(0.80, value)
    return make_data(rows, accuracy)


def test_parameter_sweep_layout():
    table = parameter_sweep(sweep_data())
    assert list(table.cells.index) == ["elu", "celu"]
    assert list(table.cells.columns) == ["α=0.1", "α=0.5", "α=1"]
    assert table.cells.loc["elu"].tolist() == ["42.0 (80.0)", "45.0 (80.0)", "40.0 (80.0)"]
    assert table.cells.loc["celu"].tolist() == ["41.0 (80.0)", "43.0 (80.0)", "44.0 (80.0)"]
    assert table.bold.values.tolist() == [[False, True, False], [False, False, True]]


def test_parameter_sweep_missing_cell_and_errors():
    data = sweep_data()
    data.models = data.models[data.models["run_id"] != 2]        # elu α=1 never ran
    assert parameter_sweep(data).cells.at["elu", "α=1"] == "–"
    relu_only = make_data([model(1), model(2)], {1: accuracies(0.8, 0.5), 2: accuracies(0.8, 0.4)})
    with pytest.raises(RobevalError, match="elu or celu with its alpha recorded; activations found: relu"):
        parameter_sweep(relu_only)


def smooth_grad_data() -> ReportData:
    """The four SAT Table 1 rows (ReLU) plus an ELU run that the ablation leaves out."""
    numbers = {"both": (0.690, 0.421), "none": (0.688, 0.420), "attacker": (0.676, 0.429),
               "optimizer": (0.690, 0.419)}
    rows, accuracy = [], {}
    for mode, (clean, robust) in numbers.items():
        run_id = len(rows) + 1
        rows.append(model(run_id, smooth_grad=mode))
        accuracy[run_id] = accuracies(clean, robust)
    rows.append(model(9, "elu", {"alpha": 1.0}))
    accuracy[9] = accuracies(0.99, 0.99)
    return make_data(rows, accuracy)


def test_smooth_grad_ablation_layout():
    table = smooth_grad_ablation(smooth_grad_data())
    assert list(table.cells.index) == ["none", "attacker", "optimizer", "both"]
    assert list(table.cells.columns) == ["smooth gradient for attacker", "smooth gradient for optimizer",
                                         "clean", "worst case"]
    assert table.cells.values.tolist() == [
        ["✗", "✗", "68.8", "42.0"],
        ["✓", "✗", "67.6 (−1.2)", "42.9 (+0.9)"],
        ["✗", "✓", "69.0 (+0.2)", "41.9 (−0.1)"],
        ["✓", "✓", "69.0 (+0.2)", "42.1 (+0.1)"],
    ]
    assert table.bold.values.tolist() == [[False, False, False, False], [False, False, False, True],
                                          [False, False, True, False], [False, False, True, False]]
    assert "none/none" in table.notes


def test_smooth_grad_ablation_needs_modes():
    rows = [{"run_id": 1, "label": "a", "activation_name": "relu"},
            {"run_id": 2, "label": "b", "activation_name": "relu"}]
    data = make_data(rows, {1: accuracies(0.8, 0.5), 2: accuracies(0.7, 0.4)})
    with pytest.raises(RobevalError, match="smooth-grad mode"):
        smooth_grad_ablation(data)
    only_none = make_data([model(1), model(2, weight_decay=1e-4)],
                          {1: accuracies(0.8, 0.5), 2: accuracies(0.7, 0.4)})
    with pytest.raises(RobevalError, match="at least two smooth-grad modes"):
        smooth_grad_ablation(only_none)


def test_tricks_table_weight_decay():
    rows = [model(1, weight_decay=5e-4), model(2, weight_decay=1e-4, label_smoothing=0.1),
            model(3, weight_decay=5e-4)]
    accuracy = {1: {"clean": 0.82, "apgd-ce": 0.52, "worst case": 0.50},
                2: {"clean": 0.84, "apgd-ce": 0.49, "worst case": 0.47},
                3: {"clean": 0.80, "apgd-ce": 0.50, "worst case": 0.48}}
    table = tricks_table(make_data(rows, accuracy), "weight_decay")
    assert list(table.cells.index) == ["wd=1e-4", "wd=5e-4"]
    assert table.cells.index.name == "weight_decay"
    assert list(table.cells.columns) == ["clean", "apgd-ce", "worst case"]
    assert table.cells.values.tolist() == [["84.0", "49.0", "47.0"], ["81.0", "51.0", "49.0"]]
    assert table.bold.values.tolist() == [[True, False, False], [False, True, True]]
    assert "Best weight_decay by worst case: wd=5e-4" in table.notes
    assert "also differ" in table.notes and "label_smoothing" in table.notes


def test_tricks_table_strings_and_errors():
    rows = [model(1, bn_mode="train"), model(2, bn_mode="eval")]
    data = make_data(rows, {1: accuracies(0.8, 0.45), 2: accuracies(0.8, 0.45)})
    table = tricks_table(data, "bn_mode")
    assert list(table.cells.index) == ["bn=eval", "bn=train"]
    assert table.bold.values.tolist() == [[True, True], [True, True]]
    with pytest.raises(RobevalError, match="unknown trick 'dropout'"):
        tricks_table(data, "dropout")
    with pytest.raises(RobevalError, match="at least two values of weight_decay"):
        tricks_table(data, "weight_decay")
    with pytest.raises(RobevalError, match="no metric 'autoattack'"):
        tricks_table(data, "bn_mode", metric="autoattack")


def test_number_formatting():
    assert [number(v) for v in (0.0005, 0.00025, 0.1, 128.0, np.int64(64), "train", 0.0)] == [
        "5e-4", "2.5e-4", "0.1", "128", "64", "train", "0"]


# --- rendering -----------------------------------------------------------------------------

def test_markdown_pipe_table_with_bold(suite_data):
    text = to_markdown(main_table(suite_data, baseline=1))
    lines = text.splitlines()
    assert lines[0].startswith("| model") and "worst case" in lines[0]
    assert set(lines[1]) <= {"|", "-", ":", " "}
    assert len(lines) == 5 and all(line.count("|") == 6 for line in lines)
    assert "**81.8 (+0.6)**" in text and "**50.0 (+3.0)**" in text
    assert "**81.2**" not in text


def test_markdown_escapes_pipes():
    cells = pd.DataFrame({"a|b": ["x|y"]}, index=pd.Index(["r"], name="row"), dtype=object)
    text = to_markdown(Table("t", cells, pd.DataFrame({"a|b": [False]}, index=cells.index)))
    assert "a\\|b" in text and "x\\|y" in text


def test_latex_booktabs_escaping_and_determinism(suite_data):
    suite_data.models.loc[1, "method"] = None
    suite_data.models.loc[1, "label"] = "my_model #1 & co"
    latex = to_latex(main_table(suite_data, baseline=2), label="tab:main")
    for needle in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"\centering",
                   r"\begin{table}", r"\label{tab:main}", r"\caption{Clean and robust accuracy (\%)",
                   r"my\_model \#1 \& co", "$-$", r"elu($\alpha$=0.5)"):
        assert needle in latex
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert "–" not in latex and "−" not in latex
    assert latex == to_latex(main_table(suite_data, baseline=2), label="tab:main")


def test_latex_checkmarks_centred():
    latex = to_latex(smooth_grad_ablation(smooth_grad_data()), label="tab:sg")
    assert r"\begin{tabular}{lccrr}" in latex
    assert r"\checkmark" in latex and r"$\times$" in latex
