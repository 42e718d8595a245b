"""The store's pandas views: runs, outcomes (long and wide), summaries with Wilson intervals, notes.

`StoreViews` is a mixin of `ResultsStore`: its methods read through the store's connection
(``self._db``), read transactions (``self._read``) and run look-ups (``self._require_run``,
``self.attacks``, ``self.run_record``).
"""

from __future__ import annotations

import math

import pandas as pd

from robeval.errors import RobevalError
from robeval.results.records import AttackNotes, stored_json, wilson_interval

# Seconds a batch may take beyond twice its measured attacks before its time counts as a stop
# (loading the model and the clean pass of the first batch fit well inside it).
STOP_SLACK = 60.0


class StoreViews:
    """The pandas views of `ResultsStore` (see the module docstring for what they need)."""

    def runs(self) -> pd.DataFrame:
        """One row per run, by id: key, the `RunRecord` fields, status, times, notes, progress.

        ``config``, ``versions`` and ``notes`` are parsed back to dicts and ``attacks`` to a list;
        ``started_at``/``finished_at`` are UTC timestamps (NaT while running); ``batches`` and
        ``samples`` count what is committed; ``forward_passes``, ``backward_passes`` and
        ``passes_per_image`` are the image-passes of all its attacks over committed batches (not
        the clean pass nor the corruptions; NaN where a batch did not record them, as in the
        'worst case' row of `summary`); ``corruptions`` lists its (type, severity) conditions.
        """
        with self._read() as db:
            frame = pd.read_sql_query(
                "SELECT r.*, (SELECT COUNT(*) FROM batches b WHERE b.run_id = r.id) AS batches, "
                "(SELECT COUNT(*) FROM samples s WHERE s.run_id = r.id) AS samples, "
                "(SELECT CASE WHEN COUNT(*) = COUNT(forward_passes) "
                " THEN COALESCE(SUM(forward_passes), 0) END "
                " FROM attack_seconds t WHERE t.run_id = r.id) AS forward_passes, "
                "(SELECT CASE WHEN COUNT(*) = COUNT(backward_passes) "
                " THEN COALESCE(SUM(backward_passes), 0) END "
                " FROM attack_seconds t WHERE t.run_id = r.id) AS backward_passes "
                "FROM runs r ORDER BY r.id",
                db,
            )
            attacks = pd.read_sql_query("SELECT run_id, spec FROM attacks ORDER BY run_id, position", db)
            conditions = pd.read_sql_query("SELECT run_id, corruption, severity FROM corruptions "
                                           "ORDER BY run_id, position", db)
        suites = attacks.groupby("run_id")["spec"].agg(list)
        suite_column = pd.Series([suites.get(run_id, []) for run_id in frame["id"]], index=frame.index,
                                 dtype=object)
        frame.insert(frame.columns.get_loc("versions"), "attacks", suite_column)
        for column in ("config", "versions", "notes"):
            frame[column] = [stored_json(text, self.path, f"the {column} of run {run_id}")
                             for text, run_id in zip(frame[column], frame["id"], strict=True)]
        for column in ("started_at", "finished_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        integers = {column: "int64" for column in ("id", "n", "seed", "batch_size", "batches", "samples")}
        frame = frame.astype({**integers, "eps": float, "forward_passes": float, "backward_passes": float})
        frame["passes_per_image"] = ((frame["forward_passes"] + frame["backward_passes"])
                                     / frame["samples"].where(frame["samples"] > 0))
        grid = {run_id: list(zip(group["corruption"], group["severity"].astype(int), strict=True))
                for run_id, group in conditions.groupby("run_id")}
        frame["corruptions"] = pd.Series([grid.get(run_id, []) for run_id in frame["id"]],
                                         index=frame.index, dtype=object)
        return frame

    def outcomes(self, run_id: int) -> pd.DataFrame:
        """Long format, one row per (sample, attack) of committed batches, by index then position.

        Columns: index, label, clean_pred, position, attack (spec), outcome, margin,
        perturbation_norm, iterations (nullable Int64); a missing margin or norm is NaN.
        """
        run_id = self._require_run(run_id)
        frame = pd.read_sql_query(
            "SELECT s.sample_index AS 'index', s.label, s.clean_pred, o.position, a.spec AS attack, "
            "o.outcome, o.margin, o.perturbation_norm, o.iterations "
            "FROM outcomes o JOIN samples s USING (run_id, sample_index) "
            "JOIN attacks a USING (run_id, position) WHERE o.run_id = ? ORDER BY s.sample_index, o.position",
            self._db, params=(run_id,),
        )
        return frame.astype({"index": "int64", "label": "int64", "clean_pred": "int64", "position": "int64",
                             "attack": object, "outcome": object, "margin": float,
                             "perturbation_norm": float, "iterations": "Int64"})

    def per_sample(self, run_id: int) -> pd.DataFrame:
        """Wide format, one row per committed sample, by index.

        Columns: index, label, clean_pred, clean_correct, then for each attack spec S in suite
        order ``outcome_S``, ``margin_S``, ``perturbation_norm_S``, ``iterations_S``, and last
        ``robust``: clean-correct and outcome 'robust' under every attack of the run (worst case).
        `outcomes` gives the same data in long format.
        """
        run_id = int(run_id)
        with self._read():
            specs = self.attacks(run_id)
            samples = pd.read_sql_query(
                "SELECT sample_index AS 'index', label, clean_pred FROM samples WHERE run_id = ? "
                "ORDER BY sample_index", self._db, params=(run_id,),
            ).astype("int64")
            long = self.outcomes(run_id)
        samples["clean_correct"] = samples["label"] == samples["clean_pred"]
        for position, spec in enumerate(specs):
            part = long[long["position"] == position].set_index("index").reindex(samples["index"])
            for column in ("outcome", "margin", "perturbation_norm", "iterations"):
                samples[f"{column}_{spec}"] = part[column].array
        samples["robust"] = _robust_under(samples, specs).all(axis=1) & samples["clean_correct"]
        return samples

    def summary(self, run_id: int, confidence: float = 0.95) -> pd.DataFrame:
        """Accuracy per row with a Wilson score interval at `confidence`, over committed samples.

        Rows (index 'attack'): 'clean', each attack spec in suite order, 'worst case' (left out
        for a run without attacks, such as one of common corruptions only: with no adversary there
        is no adversarial worst case; corruption results are in `corruption_summary`). Columns:
        accuracy, ci_low, ci_high, correct, n, seconds, forward_passes, backward_passes,
        passes_per_image. An attack row counts clean-correct samples with outcome 'robust' under
        that attack; in mode 'cascade' also under every earlier attack, so the row is the
        cumulative robust accuracy after it. 'worst case' is robust under all attacks. seconds:
        attack time summed over committed batches; NaN for 'clean' (not measured), the sum over
        all attacks for 'worst case'. forward_passes / backward_passes: image-passes summed over
        committed batches ('clean': the clean classification; 'worst case': all attacks, not the
        clean pass); passes_per_image: (forward + backward) / n. Passes are NaN where a committed
        batch did not record them (stores written before pass counting).
        """
        run_id = int(run_id)
        record = self.run_record(run_id)
        frame = self.per_sample(run_id)
        robust = robust_rows(frame, record.attacks, record.mode)
        seconds = self._seconds(run_id, len(record.attacks))
        passes = self._passes(run_id, len(record.attacks))
        rows = [("clean", int(frame["clean_correct"].sum()), math.nan, self._clean_passes(run_id))]
        for position, spec in enumerate(record.attacks):
            rows.append((spec, int(robust[spec].sum()), seconds[position], passes[position]))
        total = (sum(forward for forward, _ in passes), sum(backward for _, backward in passes))
        if record.attacks:
            rows.append(("worst case", int(frame["robust"].sum()), float(sum(seconds)), total))
        return _summary_frame(rows, len(frame), confidence)

    def working_seconds(self, run_id: int) -> float:
        """Wall-clock seconds the run's evaluation worked, not counting the time it lay stopped.

        Each committed batch counts the time since the previous commit (the first batch, since
        the run started), and the finished run the time from its last commit to its finish. A
        stopped and resumed evaluation leaves a stretch of that time with nothing running, and
        the store does not record when it resumed: a batch committed more than twice its attacks'
        and corruptions' seconds plus `STOP_SLACK` after the one before straddled a stop, and
        counts only those seconds (so its clean pass and bookkeeping are left out); a finish that
        long after the last commit counts nothing.
        """
        self._require_run(run_id)
        with self._read() as db:
            started, finished = db.execute("SELECT started_at, finished_at FROM runs WHERE id = ?",
                                           (run_id,)).fetchone()
            batches = db.execute(
                "SELECT b.committed_at, "
                "(SELECT COALESCE(SUM(seconds), 0) FROM attack_seconds t "
                " WHERE t.run_id = b.run_id AND t.batch_index = b.batch_index) + "
                "(SELECT COALESCE(SUM(seconds), 0) FROM corruption_seconds c "
                " WHERE c.run_id = b.run_id AND c.batch_index = b.batch_index) "
                "FROM batches b WHERE b.run_id = ? ORDER BY b.committed_at, b.batch_index",
                (run_id,)).fetchall()
        moments = [(pd.Timestamp(committed), float(measured)) for committed, measured in batches]
        if finished is not None:
            moments.append((pd.Timestamp(finished), 0.0))
        total, previous = 0.0, pd.Timestamp(started)
        for moment, measured in moments:
            between = max((moment - previous).total_seconds(), 0.0)
            total += between if between <= 2 * measured + STOP_SLACK else measured
            previous = moment
        return total

    def _seconds(self, run_id: int, positions: int) -> list[float]:
        rows = self._db.execute(
            "SELECT position, SUM(seconds) FROM attack_seconds WHERE run_id = ? GROUP BY position", (run_id,)
        ).fetchall()
        totals = dict(rows)
        return [float(totals.get(position, 0.0)) for position in range(positions)]

    def _passes(self, run_id: int, positions: int) -> list[tuple[float, float]]:
        """(forward, backward) image-passes per attack position; NaN if any batch lacks them."""
        rows = self._db.execute(
            "SELECT position, SUM(forward_passes), SUM(backward_passes), "
            "2 * COUNT(*) - COUNT(forward_passes) - COUNT(backward_passes) "
            "FROM attack_seconds WHERE run_id = ? GROUP BY position", (run_id,)
        ).fetchall()
        totals = {position: (math.nan, math.nan) if missing else (float(fwd or 0), float(bwd or 0))
                  for position, fwd, bwd, missing in rows}
        return [totals.get(position, (0.0, 0.0)) for position in range(positions)]

    def _clean_passes(self, run_id: int) -> tuple[float, float]:
        """(forward, 0) image-passes of the clean classification; NaN if any batch lacks them."""
        total, missing = self._db.execute(
            "SELECT SUM(clean_forward_passes), COUNT(*) - COUNT(clean_forward_passes) "
            "FROM batches WHERE run_id = ?", (run_id,)
        ).fetchone()
        return (math.nan, math.nan) if missing else (float(total or 0), 0.0)

    def attack_notes(self, run_id: int) -> dict[str, AttackNotes]:
        """What the engine noted about each attack of the run, added up over committed batches."""
        run_id = int(run_id)
        specs = self.attacks(run_id)
        with self._read() as db:
            rows = db.execute("SELECT position, notes FROM attack_seconds WHERE run_id = ? "
                              "ORDER BY batch_index, position", (run_id,)).fetchall()
        totals = {spec: AttackNotes() for spec in specs}
        for position, text in rows:
            if text is not None and position < len(specs):
                totals[specs[position]].add(stored_json(text, self.path, f"the notes of run {run_id}"))
        return totals

    def worst_case(self, run_id: int, attacks: list[str] | None = None) -> float:
        """Fraction of committed samples that are clean-correct and 'robust' under every chosen attack.

        `attacks` defaults to the whole suite (NaN when nothing is committed). In mode 'cascade' a
        sample broken by an attack left out of `attacks` is 'skipped' by later ones and so counts as
        not robust: for a subset that omits earlier attacks the figure is a lower bound.
        """
        run_id = int(run_id)
        frame = self.per_sample(run_id)
        specs = list(dict.fromkeys(self.attacks(run_id) if attacks is None else map(str, attacks)))
        known = self.attacks(run_id)
        unknown = [spec for spec in specs if spec not in known]
        if unknown:
            raise RobevalError(
                f"attack {unknown[0]!r} is not in the suite of run {run_id} ({', '.join(known)}): "
                "choose among those"
            )
        if frame.empty:
            return math.nan
        robust = _robust_under(frame, specs).all(axis=1) & frame["clean_correct"]
        return float(robust.mean())


def _robust_under(frame: pd.DataFrame, specs: list[str]) -> pd.DataFrame:
    """Boolean frame, one column per spec: the sample's outcome under it is 'robust'."""
    return pd.DataFrame({spec: frame[f"outcome_{spec}"] == "robust" for spec in specs}, index=frame.index,
                        dtype=bool)


def robust_rows(frame: pd.DataFrame, specs: list[str], mode: str) -> pd.DataFrame:
    """Per-image flags of the attack rows of `ResultsStore.summary`, one boolean column per spec.

    `frame` is `ResultsStore.per_sample`'s. A flag is true where the sample is clean-correct and
    'robust' under that attack and, in mode 'cascade', under every earlier attack of `specs` too
    (so the column's mean is the cumulative robust accuracy after it).
    """
    clean, robust = frame["clean_correct"].astype(bool), _robust_under(frame, specs)
    flags = {}
    running = clean
    for spec in specs:
        running = running & robust[spec] if mode == "cascade" else clean & robust[spec]
        flags[spec] = running
    return pd.DataFrame(flags, index=frame.index, dtype=bool)


def _summary_frame(rows: list[tuple[str, int, float, tuple[float, float]]], n: int,
                   confidence: float) -> pd.DataFrame:
    records = []
    for name, correct, seconds, (forward, backward) in rows:
        low, high = wilson_interval(correct, n, confidence)
        accuracy = correct / n if n else math.nan
        records.append({"attack": name, "accuracy": accuracy, "ci_low": low, "ci_high": high,
                        "correct": correct, "n": n, "seconds": seconds, "forward_passes": forward,
                        "backward_passes": backward,
                        "passes_per_image": (forward + backward) / n if n else math.nan})
    return pd.DataFrame.from_records(records, index="attack")
