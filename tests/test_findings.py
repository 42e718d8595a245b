"""Findings: the verdict rule, the interval from synthetic per-image flags, and the study tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from robeval import experiments as ex
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


# Published P = 5.0, so P/2 = 2.5 is the size boundary; every bound is strict.
@pytest.mark.parametrize(("low", "high", "published", "wanted"), [
    (0.5, 6.0, 5.0, fd.REPRODUCED),            # above 0 and reaching past P/2
    (0.5, 2.5, 5.0, fd.REPRODUCED),            # touching P/2 is not below it
    (0.5, 2.4, 5.0, fd.SMALLER),               # the sign holds, the size does not
    (-1.0, 2.4, 5.0, fd.SMALLER),              # straddling 0, wholly below P/2
    (-1.0, 2.5, 5.0, fd.INCONCLUSIVE),         # touching P/2 decides nothing
    (0.0, 4.0, 5.0, fd.INCONCLUSIVE),          # touching 0 decides nothing
    (-4.0, 0.0, 5.0, fd.SMALLER),              # touches 0, so not contradicted; below P/2
    (-4.0, -0.5, 5.0, fd.CONTRADICTED),        # wholly below 0 stays contradicted
    (-4.0, 0.0, None, fd.INCONCLUSIVE),
    (-1.0, 2.4, None, fd.INCONCLUSIVE),        # no published difference: no size to fall short of
    (-1.0, 0.5, 0.0, fd.INCONCLUSIVE),         # P <= 0: no smaller verdict is possible
    (-1.0, 0.5, -3.0, fd.INCONCLUSIVE),
    (0.5, 1.0, -3.0, fd.REPRODUCED),           # P <= 0: only the sign is judged
    (-2.0, -1.0, -3.0, fd.CONTRADICTED),
])
def test_verdict_rule_against_the_published_size(low, high, published, wanted):
    assert fd.verdict(low, high, 3, "higher", None, published) == wanted


def test_the_published_size_plays_no_part_for_one_seed_or_a_claim_of_no_change():
    assert fd.verdict(-1.0, 1.0, 1, "higher", None, 10.0) == fd.INCONCLUSIVE
    assert fd.verdict(-1.5, 1.5, 3, "same", 2.0, 10.0) == fd.REPRODUCED
    assert fd.verdict(-1.0, 3.0, 3, "same", 2.0, 10.0) == fd.INCONCLUSIVE
    assert fd.VERDICTS == (fd.REPRODUCED, fd.SMALLER, fd.CONTRADICTED, fd.INCONCLUSIVE)


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


def test_a_precise_small_gain_is_smaller_than_a_large_published_one():
    base = flags(0.30, n=2000, seed=4)
    gained = base.copy()
    gained[gained[~gained].index[:4]] = True             # +0.2 points, on the same images every seed
    better, worse = {s: gained for s in range(3)}, {s: base for s in range(3)}
    alone = fd.measure(HIGHER, better, worse)
    assert alone.delta == pytest.approx(0.2) and alone.low < 0 < alone.high
    assert alone.verdict == fd.INCONCLUSIVE
    assert fd.measure(HIGHER, better, worse, published=9.3).verdict == fd.SMALLER
    assert fd.measure(HIGHER, better, worse, published=2 * alone.high).verdict == fd.INCONCLUSIVE
    assert fd.measure(HIGHER, better, worse, published=-9.3).verdict == fd.INCONCLUSIVE
    assert fd.measure(SAME, better, worse, published=9.3).verdict == fd.REPRODUCED


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


def test_findings_table_and_reproduction_count_the_smaller_verdict(tmp_path):
    import yaml

    from robeval import reproduction

    base = flags(0.30, n=2000, seed=4)
    gained = base.copy()
    gained[gained[~gained].index[:4]] = True
    measured = fd.measure(HIGHER, {s: gained for s in range(3)}, {s: base for s in range(3)}, published=9.3)
    table = tables.findings_table([{"finding": HIGHER, "paper_delta": 9.3, "measured": measured}])
    assert table.cells.loc["a beats b", "verdict"] == fd.SMALLER and "below half of it" in table.notes
    study = {"name": "tiny", "description": "two cells", "seeds": [0, 1],
             "base": {"preset": "ci-small", "data": {"dataset": "digits"}},
             "grid": {"model.activation": ["relu", "silu"]}, "attack": {"suite": "fgsm", "n": 64},
             "paper": {"source": "a paper", "note": "smaller",
                       "rows": [{"cell": {"model.activation": "relu"}, "robust": 33.0},
                                {"cell": {"model.activation": "silu"}, "robust": 42.3}]},
             "findings": [{"claim": "silu beats relu", "better": {"model.activation": "silu"},
                           "worse": {"model.activation": "relu"}}]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    text = reproduction.build([path], tmp_path, None, tmp_path / "out.md", "python -m robeval.reproduction")
    assert ("Findings: 1; reproduced: 0, smaller than published at this scale: 0, contradicted: 0, "
            "inconclusive at this scale: 1.") in text
    assert re.search(r"\| +\+9\.3 \|", text)
    experiment = ex.load_experiment(path)
    by_activation = {cell.config.model.activation: ex.setting_key(cell) for cell in ex.cells(experiment)}
    measured = {by_activation["silu"]: {s: {"robust": gained} for s in range(2)},
                by_activation["relu"]: {s: {"robust": base} for s in range(2)}}
    row, = ex.finding_rows(experiment, measured)
    assert row["paper_delta"] == pytest.approx(9.3) and row["measured"].verdict == fd.SMALLER


def test_seeds_for_the_target_width_follow_the_measured_spread():
    def measured(seed_sd, image_var):
        return fd.Measured(1.0, 0.0, 2.0, (0, 1, 2), 500, True, fd.INCONCLUSIVE, seed_sd, image_var)

    # no spread yet (one seed): unknown
    assert fd.seeds_for(fd.Measured(1.0, 0.0, 2.0, (0,), 500, True, fd.INCONCLUSIVE)) is None
    # a tight spread needs only the reported minimum
    assert fd.seeds_for(measured(1.0, 0.1)) == fd.REPORTED_SEEDS
    # k seeds suffice exactly when t(k-1)·sqrt(s²/k + image) <= 2.5, and k-1 do not
    k = fd.seeds_for(measured(6.0, 0.5))
    half = lambda k: fd.t_quantile(k - 1) * np.sqrt(36 / k + 0.5)  # noqa: E731
    assert half(k) <= 2.5 < half(k - 1)
    # an image term alone wider than the target cannot be fixed by seeds
    assert fd.seeds_for(measured(1.0, 4.0)) == fd.MOST_SEEDS + 1


def test_the_findings_table_says_how_many_seeds_the_target_width_needs():
    measured = fd.measure(HIGHER, {s: flags(0.45, seed=s) for s in range(3)},
                          {s: flags(0.30, seed=9 + s) for s in range(3)})
    table = tables.findings_table([{"finding": HIGHER, "paper_delta": 9.3, "measured": measured}])
    cell = table.cells.loc["a beats b", "seeds for ±2.5"]
    assert cell == str(fd.seeds_for(measured)) or cell.startswith("more than")
