"""Findings: a paper's claim as a comparison between two cells, measured and given a verdict.

A study file states each finding of its paper as::

    findings:
      - claim: smooth activations are more robust than ReLU (SiLU against ReLU)
        better: {model.activation: silu}     # grid values naming one cell (all its seeds)
        worse: {model.activation: relu}
        metric: robust                        # clean | robust (worst case) | an attack of the suite
        paper_metric: robust                  # the published column it is read from (default: metric)

    or, for a claim that a change does *not* matter, `expect: same` with a `margin` in percentage
    points (better and worse then only orient the difference).

The paper's difference is computed from the study's published rows (`paper.rows`), never typed
twice. Ours is measured on the cells' evaluations:

* d_s = acc(better, seed s) − acc(worse, seed s) for every seed s that both cells finished;
  the estimate is Δ = mean_s d_s (percentage points).
* Its standard error adds the seed-to-seed spread and the per-image sampling of the test set:
  SE² = var_s(d_s)/k + var_i(D_i)/n, with D_i = mean_s (x_better,s,i − x_worse,s,i) the paired
  per-image difference (1 when only the better cell gets image i right, −1 the other way round)
  over the n test images that both cells were evaluated on. Both terms hold the image×seed noise
  once, so SE is slightly conservative. When the two cells were evaluated on different images
  the image term is unpaired: p_b(1 − p_b)/n_b + p_w(1 − p_w)/n_w, with p the accuracies
  averaged over seeds.
* The 95% interval is Δ ± t·SE with t the Student quantile at k − 1 degrees of freedom (4.30 at
  three seeds: few seeds make wide intervals, on purpose). With one seed only the image term
  is known, the interval is Δ ± 1.96·SE and says nothing about seed-to-seed spread.

Verdict rule (`verdict`), fixed before any run; P is the paper's difference (better − worse,
computed from the published rows, `paper_delta`):

* expect higher (the paper says better > worse), in this order:
  - *contradicted* when the whole interval is below 0;
  - *smaller than published at this scale* when P > 0 and the whole interval is below P/2: the
    effect, whatever its sign, is less than half the published one (an interval inside
    (0, P/2) lands here, not in reproduced: the sign holds, the size does not);
  - *reproduced* when the whole interval is above 0 (and reaches P/2 or beyond);
  - else *inconclusive at this scale*.
  With P ≤ 0 or no published P there is no size to fall short of, so only the sign is judged.
* expect same: *reproduced* when the interval lies inside [−margin, +margin], *contradicted*
  when it lies wholly outside it, else inconclusive (P plays no part);
* fewer than two seeds: always inconclusive (no seed spread to judge the difference against).

For expect higher every bound is strict: an interval that touches 0 or P/2 does not cross it
(for expect same an interval touching ±margin still lies inside it).

Error rates. Each verdict other than inconclusive is a one-sided decision read off the 95%
two-sided interval, i.e. a one-sided test at 2.5%: when the true difference sits exactly at
the boundary the decision crosses (0 for reproduced and contradicted, P/2 for smaller than
published), the interval lies wholly on the wrong side of it with probability at most 2.5%,
and less the further the truth is from the boundary. So a true difference ≤ 0 is called
reproduced, a true difference ≥ 0 contradicted, and a true difference ≥ P/2 smaller than
published, each at most 2.5% of the time (the same ±margin argument holds for expect same at
the margin). These rates are as good as the interval's coverage: the t interval treats the
per-seed differences as normal and the image term as known, and is slightly conservative
because the two variance terms both hold the image×seed noise (see above). The converse is
the cost of few seeds and images: a finding whose true difference is near a boundary stays
inconclusive however it comes out, until the interval is narrower than its distance to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from robeval.errors import RobevalError

FINDING_KEYS = ("claim", "better", "worse", "metric", "paper_metric", "expect", "margin")
EXPECTS = ("higher", "same")
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive at this scale"
SMALLER = "smaller than published at this scale"
VERDICTS = (REPRODUCED, SMALLER, CONTRADICTED, INCONCLUSIVE)   # the order reports count them in
MIN_SEEDS = 2
REPORTED_SEEDS = 5          # the fewest seeds a reproduction study reports
TARGET_HALF_WIDTH = 2.5     # points: the half-width a headline finding's interval is run down to
MOST_SEEDS = 100
# Two-sided 95% Student t quantiles by degrees of freedom; the normal 1.96 beyond the table.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


@dataclass(frozen=True)
class Finding:
    """One claim of a paper: `better` beats `worse` on `metric` (or matches it, expect 'same')."""

    claim: str
    better: dict
    worse: dict
    metric: str = "robust"
    paper_metric: str = "robust"
    expect: str = "higher"
    margin: float | None = None


@dataclass(frozen=True)
class Measured:
    """Our difference better − worse (percentage points) with its 95% interval and verdict."""

    delta: float | None
    low: float | None
    high: float | None
    seeds: tuple[int, ...]
    n: int
    paired: bool
    verdict: str
    seed_sd: float | None = None     # spread of the per-seed differences (points), 2+ seeds
    image_var: float | None = None   # the image term of SE² (points²)


def _finding(item, where: str) -> Finding:
    known = ", ".join(FINDING_KEYS)
    if not isinstance(item, dict):
        raise RobevalError(f"each finding in {where} must be a mapping with keys {known}")
    unknown = [str(k) for k in item if k not in FINDING_KEYS]
    if unknown:
        raise RobevalError(f"unknown key {unknown[0]!r} in a finding of {where}; known: {known}")
    for key in ("claim", "better", "worse"):
        if not item.get(key):
            raise RobevalError(f"a finding of {where} needs {key!r}")
    claim = str(item["claim"])
    if not isinstance(item["better"], dict) or not isinstance(item["worse"], dict):
        raise RobevalError(f"finding {claim!r} in {where}: 'better' and 'worse' must map grid keys to values")
    expect = str(item.get("expect", "higher"))
    if expect not in EXPECTS:
        raise RobevalError(f"finding {claim!r} in {where}: expect must be one of {', '.join(EXPECTS)}")
    margin = item.get("margin")
    if expect == "same" and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin <= 0):
        raise RobevalError(f"finding {claim!r} in {where}: expect 'same' needs a positive margin "
                           "in percentage points")
    metric = str(item.get("metric", "robust"))
    return Finding(claim, dict(item["better"]), dict(item["worse"]), metric,
                   str(item.get("paper_metric", metric)), expect, None if margin is None else float(margin))


def parse_findings(raw, where: str) -> tuple[Finding, ...]:
    """The `findings` list of a study file, checked (one-line errors)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RobevalError(f"'findings' in {where} must be a list of mappings with keys "
                           f"{', '.join(FINDING_KEYS)}")
    return tuple(_finding(item, where) for item in raw)


def t_quantile(df: int) -> float:
    """The two-sided 95% Student t quantile at `df` degrees of freedom (conservative between rows)."""
    if df < 1:
        raise RobevalError("a t quantile needs at least one degree of freedom")
    below = [d for d in T_975 if d <= df]
    return 1.96 if df > max(T_975) else T_975[max(below)]


def verdict(low: float | None, high: float | None, seeds: int, expect: str = "higher",
            margin: float | None = None, published: float | None = None) -> str:
    """One of VERDICTS for the interval [low, high] (percentage points), by the module docstring's rule.

    `published` is the paper's difference P; only an `expect: higher` finding with P > 0 can be
    *smaller than published* (its whole interval below P/2).
    """
    if low is None or high is None or seeds < MIN_SEEDS:
        return INCONCLUSIVE
    if expect == "same":
        if margin is None:
            raise RobevalError("expect 'same' needs a margin")
        if -margin <= low and high <= margin:
            return REPRODUCED
        return CONTRADICTED if low > margin or high < -margin else INCONCLUSIVE
    if high < 0:
        return CONTRADICTED
    if published is not None and published > 0 and high < published / 2:
        return SMALLER
    return REPRODUCED if low > 0 else INCONCLUSIVE


def _paired_images(better: Mapping[int, pd.Series], worse: Mapping[int, pd.Series], seeds) -> bool:
    indices = {frozenset(better[s].index) for s in seeds} | {frozenset(worse[s].index) for s in seeds}
    return len(indices) == 1


def measure(finding: Finding, better: Mapping[int, pd.Series], worse: Mapping[int, pd.Series],
            published: float | None = None) -> Measured:
    """Our difference for `finding` from per-image 0/1 flags (by image index) per seed of each cell.

    `published` is the paper's difference (`paper_delta`), which the verdict measures ours against.
    """
    seeds = tuple(sorted(set(better) & set(worse)))
    if not seeds:
        return Measured(None, None, None, (), 0, False, INCONCLUSIVE)
    per_seed = [100 * (float(better[s].mean()) - float(worse[s].mean())) for s in seeds]
    delta = sum(per_seed) / len(seeds)
    paired = _paired_images(better, worse, seeds)
    if paired:
        diffs = sum((better[s].astype(float) - worse[s].astype(float)) for s in seeds) / len(seeds)
        n = len(diffs)
        image_var = 1e4 * float(diffs.var(ddof=1)) / n if n > 1 else 0.0
    else:
        p_b = sum(float(better[s].mean()) for s in seeds) / len(seeds)
        p_w = sum(float(worse[s].mean()) for s in seeds) / len(seeds)
        n_b = min(len(better[s]) for s in seeds)
        n_w = min(len(worse[s]) for s in seeds)
        n = min(n_b, n_w)
        image_var = 1e4 * (p_b * (1 - p_b) / n_b + p_w * (1 - p_w) / n_w)
    seed_var = _variance(per_seed) / len(seeds) if len(seeds) > 1 else 0.0
    quantile = t_quantile(len(seeds) - 1) if len(seeds) > 1 else 1.96
    half = quantile * math.sqrt(seed_var + image_var)
    low, high = delta - half, delta + half
    return Measured(delta, low, high, seeds, n, paired,
                    verdict(low, high, len(seeds), finding.expect, finding.margin, published),
                    math.sqrt(_variance(per_seed)) if len(seeds) > 1 else None, image_var)


def seeds_for(measured: Measured, half_width: float = TARGET_HALF_WIDTH,
              most: int = MOST_SEEDS) -> int | None:
    """How many seeds make this finding's 95% interval at most ±`half_width` points, at the seed
    spread and image term measured so far (at least `REPORTED_SEEDS`); None while fewer than two
    seeds give no spread, `most + 1` when even `most` seeds would not (the image term alone is
    too wide: more test images are needed, not more seeds)."""
    if measured.seed_sd is None or measured.image_var is None:
        return None
    for seeds in range(REPORTED_SEEDS, most + 1):
        half = t_quantile(seeds - 1) * math.sqrt(measured.seed_sd ** 2 / seeds + measured.image_var)
        if half <= half_width:
            return seeds
    return most + 1


def _variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def paper_delta(finding: Finding, published: Mapping[str, Mapping[str, float]],
                better_key: str, worse_key: str) -> float | None:
    """The paper's better − worse on `paper_metric` from the published values by cell key, or None."""
    b = published.get(better_key, {}).get(finding.paper_metric)
    w = published.get(worse_key, {}).get(finding.paper_metric)
    return None if b is None or w is None else round(float(b) - float(w), 2)
