"""Findings: the verdict rule, the interval from synthetic per-image flags, and the study tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robeval import findings as fd
from robeval.errors import RobevalError
from robeval.report import tables

HIGHER = fd.Finding("a beats b", {"model.activation": "silu"}, {"model.activation": "relu"})
SAME = fd.Finding("a matches b", {"model.activation": "silu"}, {"model.activation": "relu"},
                  metric="clean", expect="same", margin=2.0)


def flags(accuracy: float, n: int = 400, seed: int = 0, index=None) -> pd.Series:
    """n per-image 0/1 flags with exactly round(accuracy·n) ones, shuffled by `seed`."""
    values = np.zeros(n, dtype=bool)
    values[:round(accuracy * n)] = True
    np.random.default_rng(seed).shuffle(values)
    return pd.Series(values, index=np.arange(n) if index is None else index)


@pytest.mark.parametrize(("low", "high", "seeds", "expect", "margin", "wanted"), [
    (0.5, 4.0, 3, "higher", None, fd.REPRODUCED),
    (-4.0, -0.5, 3, "higher", None, fd.CONTRADICTED),
    (-1.0, 3.0, 3, "higher", None, fd.INCONCLUSIVE),
    (0.5, 4.0, 1, "higher", None, fd.INCONCLUSIVE),
    (-1.5, 1.5, 3, "same", 2.0, fd.REPRODUCED),
    (2.5, 6.0, 3, "same", 2.0, fd.CONTRADICTED),
    (-6.0, -2.5, 3, "same", 2.0, fd.CONTRADICTED),
    (-1.0, 3.0, 3, "same", 2.0, fd.INCONCLUSIVE),
])
def test_verdict_rule(low, high, seeds, expect, margin, wanted):
    assert fd.verdict(low, high, seeds, expect, margin) == wanted


def test_a_clear_paired_gain_over_three_seeds_is_reproduced():
    better = {s: flags(0.45, seed=s) for s in range(3)}
    worse = {s: flags(0.30, seed=10 + s) for s in range(3)}
    result = fd.measure(HIGHER, better, worse)
    assert result.delta == pytest.approx(15.0) and result.paired and result.n == 400
    assert result.low > 0 and result.verdict == fd.REPRODUCED
    flipped = fd.measure(HIGHER, worse, better)
    assert flipped.delta == pytest.approx(-15.0) and flipped.verdict == fd.CONTRADICTED


def test_seed_spread_widens_the_interval_until_it_is_inconclusive():
    better = {0: flags(0.40), 1: flags(0.30, seed=1), 2: flags(0.50, seed=2)}
    worse = {s: flags(0.38, seed=20 + s) for s in range(3)}
    result = fd.measure(HIGHER, better, worse)
    assert result.delta == pytest.approx(2.0)
    per_seed = [2.0, -8.0, 12.0]
    seed_half = fd.t_quantile(2) * np.std(per_seed, ddof=1) / np.sqrt(3)
    assert result.high - result.delta >= seed_half
    assert result.verdict == fd.INCONCLUSIVE


def test_one_seed_is_never_more_than_inconclusive_and_missing_seeds_are_dropped():
    result = fd.measure(HIGHER, {0: flags(0.9), 1: flags(0.9, seed=1)}, {0: flags(0.1)})
    assert result.seeds == (0,) and result.delta == pytest.approx(80.0)
    assert result.verdict == fd.INCONCLUSIVE
    empty = fd.measure(HIGHER, {}, {0: flags(0.1)})
    assert empty.delta is None and empty.verdict == fd.INCONCLUSIVE


def test_same_claim_within_the_margin_is_reproduced():
    better = {s: flags(0.50, n=2000, seed=s) for s in range(3)}
    worse = {}
    for seed, values in better.items():
        worse[seed] = values.copy()
        worse[seed][values[values].index[:10 + seed]] = False   # the two cells differ on a few images
    result = fd.measure(SAME, better, worse)
    assert -2.0 <= result.low and result.high <= 2.0 and result.verdict == fd.REPRODUCED


def test_different_test_images_fall_back_to_the_unpaired_interval():
    better = {s: flags(0.45, seed=s) for s in range(3)}
    worse = {s: flags(0.30, seed=s, index=np.arange(400, 800)) for s in range(3)}
    result = fd.measure(HIGHER, better, worse)
    assert not result.paired and result.delta == pytest.approx(15.0)
    half = 1.96 * 100 * np.sqrt(0.45 * 0.55 / 400 + 0.30 * 0.70 / 400)
    assert result.high - result.delta >= half


def test_pairing_narrows_the_interval_when_the_cells_agree_on_most_images():
    base = flags(0.40, seed=3)
    gained = base.copy()
    gained[gained[~gained].index[:20]] = True           # the better cell also gets 20 more images right
    result = fd.measure(HIGHER, {0: gained, 1: gained, 2: gained}, {0: base, 1: base, 2: base})
    assert result.delta == pytest.approx(5.0) and result.low > 0 and result.verdict == fd.REPRODUCED


def test_parse_findings_checks_its_input():
    parsed = fd.parse_findings([{"claim": "c", "better": {"a.b": 1}, "worse": {"a.b": 2}, "metric": "pgd10",
                                 "paper_metric": "aa"}], "x.yaml")
    assert parsed[0].metric == "pgd10" and parsed[0].paper_metric == "aa" and parsed[0].expect == "higher"
    pair = {"claim": "c", "better": {"a.b": 1}, "worse": {"a.b": 2}}
    for bad, match in (([{"claim": "c", "better": {"a.b": 1}}], "needs 'worse'"),
                       ([{**pair, "expect": "same"}], "margin"),
                       ([{**pair, "colour": 1}], "unknown key"),
                       ({"claim": "c"}, "must be a list")):
        with pytest.raises(RobevalError, match=match) as info:
            fd.parse_findings(bad, "x.yaml")
        assert "\n" not in str(info.value)


def test_findings_and_published_tables_render():
    measured = fd.measure(HIGHER, {s: flags(0.45, seed=s) for s in range(3)},
                          {s: flags(0.30, seed=9 + s) for s in range(3)})
    table = tables.findings_table([{"finding": HIGHER, "paper_delta": 9.3, "measured": measured}])
    row = table.cells.loc["a beats b"]
    assert row["paper Δ"] == "+9.3" and row["ours Δ [95% CI]"].startswith("+15.0 [")
    assert row["verdict"] == fd.REPRODUCED and row["seeds × images"] == "3 × 400"
    assert "reproduced" in tables.to_markdown(table) and "\\begin{table}" in tables.to_latex(table, "tab:f")
    published = tables.published_table([{"label": "activation=silu", "paper": {"clean": 69.7, "robust": 42.3},
                                         "ours": {"clean": [0.5, 0.52], "worst case": [0.3, 0.32]},
                                         "seeds": [0, 1]},
                                        {"label": "activation=relu", "paper": {"robust": -7.9}, "ours": {},
                                         "seeds": []}])
    assert published.cells.loc["activation=silu", "paper robust"] == "42.3"
    assert published.cells.loc["activation=silu", "ours clean"] == "51.0 ± 1.4"
    assert published.cells.loc["activation=relu", "paper robust"] == "−7.9"
    assert published.cells.loc["activation=relu", "ours clean"] == "–"
