"""Regression check: rerun an experiment at a fixed seed and compare it with a committed baseline.

`update_baseline` runs the experiment once per seed (default 0, 1, 2) and writes a JSON
baseline holding, per cell (its name without the seed) and metric (clean accuracy, accuracy
after each attack of the suite, worst case): the value at the check seed (the first seed), the
value at every seed, their spread (sample standard deviation and range) and the seed-to-seed
discordance (the fraction of test images on which the check seed's model and another seed's
model disagree, averaged over the other seeds); plus the per-image robust flags of the check
seed, and provenance (robeval and torch versions, date, device, SHA-256 of the experiment file).

`run_check` trains every cell afresh at the check seed, evaluates it on the same test images
and compares each metric with the baseline in two ways:

* Paired (McNemar). Of the images whose flag changed, b were robust (or correct) in the
  baseline and are not now, c the other way round. If nothing but per-image chance moved the
  outcomes, b − c is centred on 0 with standard deviation √(b + c); the change is
  *significant* when |b − c| > 3·√(b + c) (z > 3, two-sided p ≈ 0.003).
* Unpaired, against the seed-to-seed spread. tol = max(1.5 pp, 3·√2·s·√min(1, r)), where s is
  the standard deviation of the metric over the baseline seeds, √2·s that of the difference of
  two independent runs, and r = ((b + c)/n) / d_seed how far the rerun has diverged from the
  baseline model relative to a different seed.

A metric fails when its accuracy moved by more than tol AND the paired test is significant.

Why this rule. The same seed on the same machine reproduces the baseline exactly on CPU
(b = c = 0: nothing can fail). A different torch, BLAS or CPU makes training take another
path, and the rerun then behaves like another seed: r ≈ 1, and the full seed tolerance
applies, so only moves beyond three standard deviations of seed noise fail. With three seeds s
itself is uncertain (it may come out small by chance), which is why the paired test must agree
as well, and why no tolerance is below the floor of 1.5 percentage points, a move too small to
matter on a few hundred images. When the models stay nearly identical (a change in the
evaluation, or a small numerical one), r is small, seed noise cannot explain a move, the
tolerance shrinks towards the floor and the paired test decides: a systematic shift of a
few percent with few discordant images is then caught.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from robeval.checkpoints import atomic_write_text
from robeval.device import resolve_device
from robeval.errors import RobevalError
from robeval.experiments import cells as experiment_cells
from robeval.experiments import metric_flags, report_dir, run_experiment
from robeval.identity import file_sha256
from robeval.results import ResultsStore

FORMAT = "robeval-baseline/1"
DEFAULT_SEEDS = (0, 1, 2)
FLOOR = 0.015          # smallest tolerance: 1.5 percentage points
SPREAD_K = 3.0         # standard deviations of the difference of two runs
PAIRED_Z = 3.0         # McNemar: |b − c| > PAIRED_Z · √(b + c)


@dataclass(frozen=True)
class MetricCheck:
    """One metric of one cell: baseline and current accuracy, the tolerance and both tests."""

    cell: str
    metric: str
    baseline: float
    current: float
    tolerance: float
    lost: int        # b: robust (correct) in the baseline, not now
    gained: int      # c: not robust in the baseline, robust now

    @property
    def delta(self) -> float:
        """Current minus baseline accuracy."""
        return self.current - self.baseline

    @property
    def z(self) -> float:
        """McNemar's statistic (c − b)/√(b + c); 0 when no image changed."""
        total = self.lost + self.gained
        return 0.0 if total == 0 else (self.gained - self.lost) / math.sqrt(total)

    @property
    def significant(self) -> bool:
        """The paired test says the change is beyond per-image chance."""
        return abs(self.gained - self.lost) > PAIRED_Z * math.sqrt(self.lost + self.gained)

    @property
    def passed(self) -> bool:
        """Within tolerance, or not significant in the paired test."""
        return abs(self.delta) <= self.tolerance + 1e-12 or not self.significant


@dataclass
class CheckResult:
    """Every metric's comparison with the baseline."""

    experiment: str
    seed: int
    metrics: list[MetricCheck]

    @property
    def passed(self) -> bool:
        """No metric failed."""
        return all(m.passed for m in self.metrics)

    @property
    def failures(self) -> list[MetricCheck]:
        """The metrics that moved beyond tolerance."""
        return [m for m in self.metrics if not m.passed]


# --- running the experiment ------------------------------------------------------------------

def cell_key(cell_name: str) -> str:
    """A cell's name without its seed (the key of the baseline); 'base' for an empty grid."""
    return re.sub(r"(^|,)seed=-?\d+", "", cell_name).strip(",") or "base"


def measure(experiment, seeds: Sequence[int], root: Path, progress: bool = False,
            log: Callable[[str], None] = print) -> dict[int, dict[str, dict[str, list[bool]]]]:
    """Run `experiment` at `seeds` under `root`: {seed: {cell key: {metric: per-image flags}}}."""
    fresh = _fresh_root(experiment, root)
    result = run_experiment(dataclasses.replace(experiment, seeds=tuple(seeds)), fresh,
                            progress=progress, log=log)
    measured: dict[int, dict] = {seed: {} for seed in seeds}
    with ResultsStore(result.store) as store:
        for cell_result in result.cells:
            cell = cell_result.cell
            measured[cell.seed][cell_key(cell.name)] = metric_flags(store, cell_result.run_id)
    return measured


def _fresh_root(experiment, root: Path) -> Path:
    """`root`, refusing one that holds earlier runs of the experiment (they would be reused)."""
    root = Path(root)
    for folder in (root / "checkpoints" / experiment.name, report_dir(experiment, root)):
        if folder.exists() and any(folder.iterdir()):
            raise RobevalError(f"{folder} holds an earlier run of {experiment.name}: a regression "
                               "check trains afresh, so choose an empty --root")
    return root


# --- the baseline -------------------------------------------------------------------------------

def _accuracy(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else math.nan


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _discordance(flags: list[bool], others: list[list[bool]]) -> float | None:
    """Mean fraction of images on which `flags` and each of `others` disagree (None: no others)."""
    if not others or not flags:
        return None
    return sum(sum(a != b for a, b in zip(flags, o, strict=True)) / len(flags) for o in others) / len(others)


def _bits(flags: list[bool]) -> str:
    return "".join("1" if flag else "0" for flag in flags)


def baseline_cell(per_seed: list[dict[str, list[bool]]]) -> dict:
    """The baseline entry of one cell from its flags at each seed (the check seed first)."""
    metrics = {}
    for metric, flags in per_seed[0].items():
        values = [_accuracy(seed_flags[metric]) for seed_flags in per_seed]
        metrics[metric] = {"value": values[0], "per_seed": values,
                           "spread": {"std": _std(values), "range": max(values) - min(values)},
                           "discordance": _discordance(flags, [f[metric] for f in per_seed[1:]])}
    return {"metrics": metrics, "flags": {metric: _bits(f) for metric, f in per_seed[0].items()}}


def provenance(experiment, device: str) -> dict:
    """Versions, date, device and the experiment file's hash."""
    from robeval import __version__

    path = experiment.path
    return {"robeval": __version__, "torch": metadata.version("torch"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device, "experiment_file": None if path is None else Path(path).name,
            "experiment_sha256": None if path is None else file_sha256(path)}


def build_baseline(experiment, measured: dict[int, dict], seeds: Sequence[int]) -> dict:
    """The baseline document (see the module docstring) from `measure`'s output."""
    keys = list(measured[seeds[0]])
    cells = {key: baseline_cell([measured[seed][key] for seed in seeds]) for key in keys}
    first = next(iter(cells.values()))["flags"]["clean"] if cells else ""
    return {"format": FORMAT, "experiment": experiment.name, "check_seed": seeds[0],
            "seeds": list(seeds), "n": len(first),
            "rule": {"floor": FLOOR, "spread_k": SPREAD_K, "paired_z": PAIRED_Z},
            "provenance": provenance(experiment, _device(experiment)), "cells": cells}


def _device(experiment) -> str:
    return str(resolve_device(experiment_cells(experiment)[0].config.device))


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` → [0, 1, 2]; anything else is a one-line error."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts or not all(re.fullmatch(r"[+-]?\d+", part) for part in parts):
        raise RobevalError(f"--seeds {text!r} must be comma-separated whole numbers, e.g. 0,1,2")
    return [int(part) for part in parts]


def update_baseline(experiment, baseline_path: str | Path, root: str | Path | None = None,
                    seeds: Sequence[int] = DEFAULT_SEEDS, progress: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """Run `experiment` at every seed and write its baseline to `baseline_path`."""
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise RobevalError("--seeds needs at least one seed")
    with _root(root) as where:
        measured = measure(experiment, seeds, where, progress, log)
    baseline = build_baseline(experiment, measured, seeds)
    atomic_write_text(Path(baseline_path), json.dumps(baseline, indent=1) + "\n")
    return baseline


def load_baseline(path: str | Path, experiment) -> dict:
    """The baseline at `path`, checked to be a baseline of `experiment`."""
    path = Path(path)
    if not path.is_file():
        raise RobevalError(f"baseline {path} does not exist: create it with `robeval check "
                           f"{experiment.name} --baseline {path} --update`")
    try:
        baseline = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RobevalError(f"baseline {path} is not UTF-8 text ({err.reason} at byte {err.start}): "
                           "regenerate it with --update") from err
    except json.JSONDecodeError as err:
        raise RobevalError(f"baseline {path} is not valid JSON ({err.msg}): regenerate it with "
                           "--update") from err
    if not isinstance(baseline, dict) or baseline.get("format") != FORMAT:
        raise RobevalError(f"{path} is not a robeval baseline ({FORMAT}): regenerate it with --update")
    for key, kind in (("provenance", dict), ("cells", dict), ("check_seed", int)):
        if not isinstance(baseline.get(key), kind) or isinstance(baseline.get(key), bool):
            raise RobevalError(f"baseline {path} lacks a valid {key!r} entry: regenerate it with "
                               "--update")
    if baseline.get("experiment") != experiment.name:
        raise RobevalError(f"baseline {path} is for experiment {baseline.get('experiment')!r}, not "
                           f"{experiment.name!r}: pass the right --baseline")
    return baseline


# --- comparing ------------------------------------------------------------------------------------

def tolerance(entry: dict, n: int, changed: int) -> float:
    """max(FLOOR, SPREAD_K·√2·s·√min(1, r)), r = (changed/n) / seed-to-seed discordance."""
    discordance = entry.get("discordance")
    ratio = 1.0 if not discordance else min(1.0, changed / n / discordance)
    return max(FLOOR, SPREAD_K * math.sqrt(2) * entry["spread"]["std"] * math.sqrt(ratio))


def compare_metric(key: str, metric: str, baseline: dict, flags: list[bool]) -> MetricCheck:
    """One metric of cell `key` against the baseline."""
    entry, old = baseline["cells"][key]["metrics"][metric], baseline["cells"][key]["flags"][metric]
    if len(old) != len(flags):
        raise RobevalError(f"cell {key} was evaluated on {len(flags)} images, the baseline on "
                           f"{len(old)}: rerun with --update")
    lost = sum(o == "1" and not f for o, f in zip(old, flags, strict=True))
    gained = sum(o == "0" and f for o, f in zip(old, flags, strict=True))
    return MetricCheck(key, metric, entry["value"], _accuracy(flags),
                       tolerance(entry, len(flags), lost + gained), lost, gained)


def compare(baseline: dict, current: dict[str, dict[str, list[bool]]]) -> list[MetricCheck]:
    """Every metric of every cell; a cell or metric set that differs from the baseline is an error."""
    if set(current) != set(baseline["cells"]):
        raise RobevalError(f"the experiment's cells ({', '.join(sorted(current))}) differ from the "
                           f"baseline's ({', '.join(sorted(baseline['cells']))}): rerun with --update")
    checks = []
    for key, metrics in current.items():
        known = baseline["cells"][key]["metrics"]
        if list(metrics) != list(known):
            raise RobevalError(f"cell {key} reports {', '.join(metrics)} but the baseline has "
                               f"{', '.join(known)}: rerun with --update")
        checks.extend(compare_metric(key, metric, baseline, flags) for metric, flags in metrics.items())
    return checks


def run_check(experiment, baseline_path: str | Path, root: str | Path | None = None,
              progress: bool = False, log: Callable[[str], None] = print) -> CheckResult:
    """Train and evaluate `experiment` at the baseline's check seed and compare."""
    baseline = load_baseline(baseline_path, experiment)
    recorded = baseline["provenance"].get("experiment_sha256")
    if experiment.path is not None and recorded not in (None, file_sha256(experiment.path)):
        log(f"note: {experiment.path} changed since the baseline was written")
    seed = int(baseline["check_seed"])
    with _root(root) as where:
        current = measure(experiment, [seed], where, progress, log)[seed]
    return CheckResult(experiment.name, seed, compare(baseline, current))


class _root:
    """`root` as a Path, or a temporary folder removed afterwards."""

    def __init__(self, root: str | Path | None):
        self.root, self.temporary = root, None

    def __enter__(self) -> Path:
        if self.root is not None:
            return Path(self.root)
        self.temporary = tempfile.TemporaryDirectory(prefix="robeval-check-")
        return Path(self.temporary.name)

    def __exit__(self, *exc_info) -> None:
        if self.temporary is not None:
            self.temporary.cleanup()


# --- output ---------------------------------------------------------------------------------------

def check_table(checks: list[MetricCheck]) -> str:
    """Fixed-width table: baseline and current accuracy (%), move and tolerance (pp), b, c, z, verdict."""
    rows = [("cell", "metric", "baseline %", "now %", "moved pp", "tol pp", "lost", "gained", "z", "")]
    for m in checks:
        rows.append((m.cell, m.metric, f"{100 * m.baseline:.1f}", f"{100 * m.current:.1f}",
                     f"{100 * m.delta:+.1f}", f"{100 * m.tolerance:.1f}", str(m.lost), str(m.gained),
                     f"{m.z:+.1f}", "ok" if m.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in
                               enumerate(zip(row, widths, strict=True))).rstrip() for row in rows)


def verdict(result: CheckResult) -> str:
    """One line: passed, or which metrics moved."""
    if result.passed:
        return (f"regression check passed: {len(result.metrics)} metrics of {result.experiment} "
                f"within tolerance of the baseline (seed {result.seed})")
    moved = ", ".join(f"{m.cell} {m.metric} {100 * m.delta:+.1f} pp" for m in result.failures)
    return f"REGRESSION: {len(result.failures)} of {len(result.metrics)} metrics moved: {moved}"
