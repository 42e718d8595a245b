"""The common-corruption results of a run: views of the store and the figures made from them.

Corruption accuracy is plain accuracy on corrupted images: every committed sample counts under
every (type, severity) condition, whatever its clean or adversarial outcome. `corruption_table`
gives accuracy per type and severity with the means RobustBench reports (over severities per
type; over types and severities in all); `mean_corruption_error` gives Hendrycks & Dietterich's
mCE against a baseline run's results.

`CorruptionViews` is a mixin of `ResultsStore`, like `StoreViews`: it reads through the store's
connection (``self._db``), read transactions (``self._read``) and ``self._require_run``.
"""

from __future__ import annotations

import math

import pandas as pd

from robeval.results.records import wilson_interval

SUMMARY_COLUMNS = ["accuracy", "ci_low", "ci_high", "correct", "n", "seconds", "forward_passes",
                   "backward_passes", "passes_per_image"]


class CorruptionViews:
    """The corruption views of `ResultsStore` (see the module docstring)."""

    def corruption_conditions(self, run_id: int) -> list[tuple[str, int]]:
        """The run's (type, severity) conditions in evaluation order (empty without corruptions)."""
        run_id = self._require_run(run_id)
        rows = self._db.execute("SELECT corruption, severity FROM corruptions WHERE run_id = ? "
                                "ORDER BY position", (run_id,)).fetchall()
        return [(str(name), int(severity)) for name, severity in rows]

    def corruption_outcomes(self, run_id: int) -> pd.DataFrame:
        """Long format, one row per (sample, condition) of committed batches, by index then position.

        Columns: index, label, clean_pred, position, corruption, severity, prediction, correct
        (prediction == label), margin (logit of the label − largest other logit; NaN if missing).
        """
        run_id = self._require_run(run_id)
        frame = pd.read_sql_query(
            "SELECT s.sample_index AS 'index', s.label, s.clean_pred, o.position, c.corruption, "
            "c.severity, o.prediction, o.margin FROM corruption_outcomes o "
            "JOIN samples s USING (run_id, sample_index) JOIN corruptions c USING (run_id, position) "
            "WHERE o.run_id = ? ORDER BY s.sample_index, o.position", self._db, params=(run_id,))
        frame = frame.astype({"index": "int64", "label": "int64", "clean_pred": "int64",
                              "position": "int64", "corruption": object, "severity": "int64",
                              "prediction": "int64", "margin": float})
        frame.insert(frame.columns.get_loc("margin"), "correct", frame["prediction"] == frame["label"])
        return frame

    def corruption_summary(self, run_id: int, confidence: float = 0.95) -> pd.DataFrame:
        """Accuracy per condition with a Wilson interval at `confidence`, over committed samples.

        Index (corruption, severity) in evaluation order; columns `SUMMARY_COLUMNS`: accuracy,
        ci_low, ci_high, correct, n, seconds (corrupting and classifying), forward_passes,
        backward_passes (image-passes; NaN where a batch did not record them) and
        passes_per_image. Empty for a run without corruptions.
        """
        with self._read():
            conditions = self.corruption_conditions(run_id)
            outcomes = self.corruption_outcomes(run_id)
            costs = self._corruption_costs(int(run_id))
            n = self._db.execute("SELECT COUNT(*) FROM samples WHERE run_id = ?",
                                 (int(run_id),)).fetchone()[0]
        correct = outcomes.groupby("position")["correct"].sum()
        records = []
        for position, (name, severity) in enumerate(conditions):
            right = int(correct.get(position, 0))
            low, high = wilson_interval(right, n, confidence)
            seconds, forward, backward = costs.get(position, (0.0, 0.0, 0.0))
            records.append({"corruption": name, "severity": severity,
                            "accuracy": right / n if n else math.nan, "ci_low": low, "ci_high": high,
                            "correct": right, "n": n, "seconds": seconds, "forward_passes": forward,
                            "backward_passes": backward,
                            "passes_per_image": (forward + backward) / n if n else math.nan})
        frame = pd.DataFrame.from_records(records, columns=["corruption", "severity", *SUMMARY_COLUMNS])
        return frame.set_index(["corruption", "severity"])

    def _corruption_costs(self, run_id: int) -> dict[int, tuple[float, float, float]]:
        """(seconds, forward, backward) per condition; passes NaN if any batch lacks them."""
        rows = self._db.execute(
            "SELECT position, SUM(seconds), SUM(forward_passes), SUM(backward_passes), "
            "2 * COUNT(*) - COUNT(forward_passes) - COUNT(backward_passes) "
            "FROM corruption_seconds WHERE run_id = ? GROUP BY position", (run_id,)).fetchall()
        return {position: (float(seconds or 0.0),
                           math.nan if missing else float(forward or 0),
                           math.nan if missing else float(backward or 0))
                for position, seconds, forward, backward, missing in rows}


def corruption_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per type (rows, in evaluation order, then 'mean') and severity (columns "1".."5",
    then 'mean'), from `corruption_summary`. The 'mean' column averages a type over its
    severities; the 'mean' row averages the types; their corner is the mean over all types and
    severities, RobustBench's corruption accuracy."""
    if summary.empty:
        return pd.DataFrame()
    wide = summary["accuracy"].unstack("severity")
    wide = wide.reindex(list(dict.fromkeys(summary.index.get_level_values("corruption"))))
    wide.columns = [str(severity) for severity in wide.columns]
    wide.index.name = "corruption"
    wide["mean"] = wide.mean(axis=1)
    wide.loc["mean"] = wide.mean(axis=0)
    return wide


def corruption_errors(summary: pd.DataFrame, baseline: pd.DataFrame) -> pd.Series:
    """Corruption error CE per type (Hendrycks & Dietterich): the run's errors summed over its
    severities ÷ the baseline's errors summed over the same severities. NaN for a type whose
    severities the baseline lacks, or where the baseline makes no error."""
    errors = 1 - summary["accuracy"]
    base = (1 - baseline["accuracy"]) if not baseline.empty else pd.Series(dtype=float)
    ratios = {}
    for name in dict.fromkeys(summary.index.get_level_values("corruption")):
        keys = [key for key in summary.index if key[0] == name]
        if any(key not in base.index for key in keys):
            ratios[name] = math.nan
            continue
        denominator = float(sum(base[key] for key in keys))
        ratios[name] = float(sum(errors[key] for key in keys)) / denominator if denominator > 0 else math.nan
    return pd.Series(ratios, dtype=float)


def mean_corruption_error(summary: pd.DataFrame, baseline: pd.DataFrame) -> float:
    """mCE: the mean over the run's types of `corruption_errors` (1.0 for the baseline itself);
    NaN when the run has no corruptions or any type's CE is unknown."""
    errors = corruption_errors(summary, baseline)
    return float(errors.mean()) if len(errors) and errors.notna().all() else math.nan
