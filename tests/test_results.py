"""The results store: resume, idempotent batches, accuracies with Wilson intervals, concurrency, errors."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from robeval.errors import RobevalError
from robeval.results import (
    SCHEMA_VERSION,
    OutcomeRow,
    Passes,
    ResultsStore,
    RunRecord,
    SampleRow,
    wilson_interval,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECS = ["apgd-ce", "apgd-t"]

# A 10-sample toy: samples 8 and 9 are misclassified clean (label 0, prediction 1).
CLEAN_CORRECT = [True] * 8 + [False] * 2
INDEPENDENT = {  # position -> outcomes of samples 0..9
    0: "RRRRRRBBSS",
    1: "RRRBBBRBSS",
}
CASCADE = {
    0: "RRRRRRBBSS",
    1: "RRRBBBSSSS",
}
LETTERS = {"R": "robust", "B": "broken", "S": "skipped"}
BATCHES = [range(0, 4), range(4, 8), range(8, 10)]
SECONDS = {0: 1.0, 1: 2.0}


def record(mode: str = "independent", **changes) -> RunRecord:
    """A run record for the toy suite."""
    values = dict(
        model="checkpoints/toy/best.pt", checkpoint_hash="ab" * 32,
        config={"model": {"arch": "resnet18", "activation": "softplus"}, "steps": 100},
        dataset="cifar10", n=10, eps=8 / 255, norm="Linf", seed=0, batch_size=4, mode=mode,
        attacks=list(SPECS), versions={"torch": "2.3.0", "robeval": "0.1.0"}, device="cpu",
        git_commit="deadbeef",
    )
    values.update(changes)
    return RunRecord(**values)


def batch_rows(indices: range, table: dict[int, str]) -> tuple[list[SampleRow], list[OutcomeRow]]:
    """Samples and outcomes of the toy for `indices`; numpy scalars as the engine may pass them."""
    samples = [SampleRow(np.int64(i), 0, 0 if CLEAN_CORRECT[i] else 1) for i in indices]
    outcomes = []
    for position, letters in table.items():
        for i in indices:
            attacked = letters[i] != "S"
            outcomes.append(OutcomeRow(
                i, position, LETTERS[letters[i]],
                np.float32(0.5 - i / 10) if attacked else None,
                np.float64(i / 1000) if attacked else None,
                np.int64(10 * (position + 1)) if attacked else None,
            ))
    return samples, outcomes


def write_toy(store: ResultsStore, run_id: int, table: dict[int, str], batches=range(3)) -> None:
    """Commit the chosen toy batches."""
    for b in batches:
        store.write_batch(run_id, b, *batch_rows(BATCHES[b], table), seconds=SECONDS)


@pytest.fixture
def store(tmp_path) -> ResultsStore:
    with ResultsStore(tmp_path / "sub" / "results.sqlite") as opened:
        yield opened


def toy_run(store: ResultsStore, mode: str) -> int:
    run_id = store.open_run(f"toy-{mode}", record(mode))
    write_toy(store, run_id, INDEPENDENT if mode == "independent" else CASCADE)
    return run_id


def test_new_store_has_schema_wal_and_version(tmp_path):
    path = tmp_path / "a" / "b" / "results.sqlite"
    ResultsStore(path).close()
    with ResultsStore(path) as store:  # opening again is fine
        assert store.runs().empty and "config" in store.runs().columns
    db = sqlite3.connect(path)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "attacks", "batches", "attack_seconds", "samples", "outcomes"} <= tables
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_resume_returns_same_run_and_keeps_batches(store):
    run_id = store.open_run("k", record())
    assert store.find_run("k") == run_id and store.find_run("other") is None
    write_toy(store, run_id, INDEPENDENT, batches=[0, 2])
    assert store.done_batches(run_id) == {0, 2}
    assert store.open_run("k", record(device="cuda:0")) == run_id
    assert store.done_batches(run_id) == {0, 2}
    assert store.open_run("k2", record()) != run_id


def test_resume_with_other_suite_is_an_error_and_fresh_replaces(store):
    run_id = store.open_run("k", record())
    write_toy(store, run_id, INDEPENDENT, batches=[0])
    with pytest.raises(RobevalError, match="--fresh") as err:
        store.open_run("k", record(attacks=["fab"]))
    assert "\n" not in str(err.value)
    assert store.open_run("k", record(attacks=["fab"]), fresh=True) == run_id
    assert store.done_batches(run_id) == set() and store.attacks(run_id) == ["fab"]


def test_reset_run_clears_everything_of_the_run(store):
    run_id, other = toy_run(store, "independent"), toy_run(store, "cascade")
    store.set_notes(run_id, {"masking": "ok"})
    store.finish_run(run_id)
    store.reset_run(run_id)
    assert store.done_batches(run_id) == set()
    assert store.outcomes(run_id).empty and store.per_sample(run_id).empty
    row = store.runs().set_index("id").loc[run_id]
    assert row["status"] == "running" and pd.isna(row["finished_at"]) and row["notes"] == {}
    assert store.summary(run_id)["n"].eq(0).all()
    assert store.done_batches(other) == {0, 1, 2}


def test_write_batch_twice_replaces_it(store):
    run_id = store.open_run("k", record())
    write_toy(store, run_id, INDEPENDENT)
    store.write_batch(run_id, 1, *batch_rows(BATCHES[1], CASCADE), seconds={0: 5.0})
    store.write_batch(run_id, 1, *batch_rows(BATCHES[1], CASCADE), seconds={0: 5.0})
    long = store.outcomes(run_id)
    assert len(long) == 20 and long["index"].is_unique is False
    assert long.groupby(["index", "position"]).size().eq(1).all()
    assert long.set_index(["index", "position"]).loc[(6, 1), "outcome"] == "skipped"
    assert store.summary(run_id).loc[SPECS, "seconds"].tolist() == [1.0 + 5.0 + 1.0, 2.0 + 2.0]


def test_bad_batch_writes_nothing(store):
    run_id = store.open_run("k", record())
    write_toy(store, run_id, INDEPENDENT, batches=[0])
    samples, outcomes = batch_rows(BATCHES[1], INDEPENDENT)
    with pytest.raises(ValueError, match="one outcome per sample"):
        store.write_batch(run_id, 1, samples, outcomes[:-1], SECONDS)
    outcomes[0].outcome = "lost"
    with pytest.raises(ValueError, match="lost"):
        store.write_batch(run_id, 1, samples, outcomes, SECONDS)
    assert store.done_batches(run_id) == {0} and len(store.per_sample(run_id)) == 4


def wilson_by_hand(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def test_wilson_interval():
    assert wilson_interval(8, 10) == pytest.approx(wilson_by_hand(8, 10))
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # textbook value
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(3, 10, 0.99) == pytest.approx(wilson_by_hand(3, 10, 0.99))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


@pytest.mark.parametrize(("mode", "correct"), [
    ("independent", [8, 6, 4, 3]),
    ("cascade", [8, 6, 3, 3]),
])
def test_summary_counts_and_wilson_intervals(store, mode, correct):
    summary = store.summary(toy_run(store, mode))
    assert summary.index.tolist() == ["clean", *SPECS, "worst case"]
    assert summary["correct"].tolist() == correct and summary["n"].eq(10).all()
    assert summary["accuracy"].tolist() == pytest.approx([k / 10 for k in correct])
    for (_, row), k in zip(summary.iterrows(), correct, strict=True):
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson_by_hand(k, 10))
    assert math.isnan(summary.loc["clean", "seconds"])
    assert summary["seconds"].tolist()[1:] == [3.0, 6.0, 9.0]
    ci99 = store.summary(store.find_run(f"toy-{mode}"), confidence=0.99)
    assert ci99.loc["clean", "ci_low"] < summary.loc["clean", "ci_low"]


def test_only_committed_batches_count(store):
    run_id = store.open_run("k", record(mode="cascade"))
    write_toy(store, run_id, CASCADE, batches=[1])  # samples 4..7
    summary = store.summary(run_id)
    assert summary["n"].eq(4).all() and summary["correct"].tolist() == [4, 2, 0, 0]
    assert summary["seconds"].tolist()[1:] == [1.0, 2.0, 3.0]
    assert store.worst_case(run_id, [SPECS[0]]) == 0.5


def test_worst_case_over_subsets(store):
    independent, cascade = toy_run(store, "independent"), toy_run(store, "cascade")
    assert store.worst_case(independent) == pytest.approx(0.3)
    assert store.worst_case(independent, [SPECS[0]]) == pytest.approx(0.6)
    assert store.worst_case(independent, [SPECS[1]]) == pytest.approx(0.4)
    assert store.worst_case(independent, []) == pytest.approx(0.8)
    assert store.worst_case(cascade) == pytest.approx(0.3)
    assert store.worst_case(cascade, [SPECS[1]]) == pytest.approx(0.3)  # lower bound: 6 was skipped
    with pytest.raises(RobevalError, match="not in the suite"):
        store.worst_case(cascade, ["square"])
    assert math.isnan(store.worst_case(store.open_run("empty", record())))


def test_per_sample_wide_with_worst_case_column(store):
    frame = store.per_sample(toy_run(store, "independent"))
    assert frame["index"].tolist() == list(range(10))
    assert frame["clean_correct"].tolist() == CLEAN_CORRECT
    assert frame["robust"].tolist() == [True] * 3 + [False] * 7
    assert frame[f"outcome_{SPECS[1]}"].str[0].str.upper().str.cat() == INDEPENDENT[1]
    assert frame[f"margin_{SPECS[0]}"].iloc[:8].tolist() == pytest.approx([0.5 - i / 10 for i in range(8)])
    assert frame[f"margin_{SPECS[0]}"].iloc[8:].isna().all()
    assert str(frame[f"iterations_{SPECS[0]}"].dtype) == "Int64"


def test_outcomes_long_and_numbers_stored_as_numbers(store, tmp_path):
    run_id = toy_run(store, "cascade")
    long = store.outcomes(run_id)
    assert list(long.columns) == ["index", "label", "clean_pred", "position", "attack", "outcome",
                                  "margin", "perturbation_norm", "iterations"]
    assert len(long) == 20 and long["attack"].tolist()[:2] == SPECS
    assert long["margin"].dtype == float and str(long["iterations"].dtype) == "Int64"
    db = sqlite3.connect(store.path)
    types = db.execute("SELECT DISTINCT typeof(margin), typeof(perturbation_norm), typeof(iterations), "
                       "typeof(sample_index) FROM outcomes").fetchall()
    assert set(types) == {("real", "real", "integer", "integer"), ("null", "null", "null", "integer")}
    assert db.execute("SELECT DISTINCT typeof(eps), typeof(n) FROM runs").fetchall() == [("real", "integer")]


def test_runs_provenance_round_trips(store):
    run_id = toy_run(store, "cascade")
    store.set_notes(run_id, {"masking": {"grad_norm": 0.1}, "status": "checked"})
    store.set_notes(run_id, {"status": "ok"})
    store.finish_run(run_id)
    row = store.runs().set_index("id").loc[run_id]
    expected = record("cascade")
    assert row["config"] == expected.config and row["versions"] == expected.versions
    assert row["attacks"] == SPECS and row["key"] == "toy-cascade"
    assert isinstance(row["eps"], float) and row["eps"] == expected.eps
    assert row["n"] == 10 and row["batch_size"] == 4 and row["git_commit"] == "deadbeef"
    assert row["status"] == "finished" and row["finished_at"] >= row["started_at"]
    assert row["notes"] == {"masking": {"grad_norm": 0.1}, "status": "ok"}
    assert row["batches"] == 3 and row["samples"] == 10
    assert store.run_record(run_id) == expected


def test_suite_checks(store):
    with pytest.raises(RobevalError, match="twice"):
        store.open_run("k", record(attacks=["a", "a"]))
    with pytest.raises(RobevalError, match="reserved"):
        store.open_run("k", record(attacks=["clean"]))
    with pytest.raises(RobevalError, match="mode"):
        store.open_run("k", record(mode="sometimes"))


WRITER = """
import sys, time
from pathlib import Path
from robeval.results import OutcomeRow, ResultsStore, RunRecord, SampleRow
path, me, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
Path(f"{go}.{me}").touch()
while not go.exists():
    time.sleep(0.005)
store = ResultsStore(path)
rec = RunRecord("m", None, {}, "cifar10", 200, 0.03, "Linf", 0, 5, "independent", ["a", "b"], {}, "cpu", None)
own, shared = store.open_run(f"own-{me}", rec), store.open_run("shared", rec)
for b in range(40):
    for run_id in (own, shared):
        if run_id == shared and b % 2 != me:
            continue
        idx = range(5 * b, 5 * b + 5)
        outs = [OutcomeRow(i, p, "robust", 1.0, 0.01, 7) for i in idx for p in (0, 1)]
        store.write_batch(run_id, b, [SampleRow(i, 1, 1) for i in idx], outs, {0: 0.1, 1: 0.2})
    time.sleep(0.003)  # an attack batch takes a while: lets the other writer in between
store.finish_run(own)
"""


def test_two_processes_write_concurrently(tmp_path):
    path, go = tmp_path / "shared.sqlite", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(me), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in (0, 1)]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{me}").exists() for me in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    results = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
    with ResultsStore(path) as store:
        runs = store.runs().set_index("key")
        assert sorted(runs.index) == ["own-0", "own-1", "shared"]
        for key in runs.index:
            assert store.done_batches(runs.loc[key, "id"]) == set(range(40))
            assert store.summary(runs.loc[key, "id"])["correct"].tolist() == [200, 200, 200, 200]
        assert runs.loc["own-0", "status"] == "finished"
        shared_seconds = store.summary(runs.loc["shared", "id"])["seconds"].tolist()
        assert shared_seconds[1:] == pytest.approx([4.0, 8.0, 12.0])


class _Rows(list):
    def fetchone(self):
        return self[0] if self else None


class _CreatedMidway:
    """A connection on which another writer creates the store right after the second read."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db, self.path, self.reads = db, path, 0

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def execute(self, sql: str) -> _Rows:
        rows = _Rows(self.db.execute(sql).fetchall())
        if sql.startswith(("SELECT", "PRAGMA")):
            self.reads += 1
            if self.reads == 2:
                ResultsStore(self.path).close()
        return rows


def test_a_store_being_created_is_never_seen_half_made(tmp_path):
    from robeval.results.schema import ownership_problem

    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode = WAL")
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        watched = _CreatedMidway(reader, path)
        assert ownership_problem(watched) is None and watched.reads == 3
        assert ownership_problem(reader) is None          # and the finished store is robeval's
    finally:
        reader.close()
    with ResultsStore(path) as store:
        assert store.runs().empty


def assert_one_line_error(path: Path, *fragments: str) -> None:
    with pytest.raises(RobevalError) as err:
        ResultsStore(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_parent_is_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "plain").write_text("not a folder")
    assert_one_line_error(tmp_path / "plain" / "results.sqlite", "--db")


def test_directory_in_place_of_the_file_is_a_one_line_error(tmp_path):
    (tmp_path / "results.sqlite").mkdir()
    assert_one_line_error(tmp_path / "results.sqlite", "--db")


def test_corrupt_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "results.sqlite"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    assert_one_line_error(path, "corrupt", "--db")


def test_newer_schema_is_a_one_line_error(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    assert_one_line_error(path, "upgrade robeval")


def write_version_1_store(path: Path) -> None:
    """A store as robeval wrote it before pass counting: schema version 1, one finished batch."""
    from robeval.results import _SCHEMA_V1

    db = sqlite3.connect(path)
    for statement in _SCHEMA_V1:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO runs (id, key, model, checkpoint_hash, config, dataset, n, eps, norm, seed, "
        "batch_size, mode, versions, device, git_commit, status, started_at) VALUES "
        "(1, 'old', 'm', NULL, '{}', 'cifar10', 2, 0.03, 'linf', 0, 2, 'cascade', '{}', 'cpu', NULL, "
        "'running', '2025-01-01T00:00:00+00:00')")
    db.execute("INSERT INTO attacks VALUES (1, 0, 'fgsm')")
    db.execute("INSERT INTO batches VALUES (1, 0, '2025-01-01T00:00:01+00:00')")
    db.execute("INSERT INTO attack_seconds VALUES (1, 0, 0, 1.5)")
    db.executemany("INSERT INTO samples VALUES (1, ?, 0, 3, 3)", [(0,), (1,)])
    db.executemany("INSERT INTO outcomes VALUES (1, ?, 0, ?, 0.1, 0.03, 1)", [(0, "robust"), (1, "broken")])
    db.commit()
    db.close()


def test_a_store_from_before_pass_counting_opens_with_unknown_passes(tmp_path):
    path = tmp_path / "old.sqlite"
    write_version_1_store(path)
    with ResultsStore(path) as store:
        summary = store.summary(1)
        assert summary.loc["fgsm", "accuracy"] == 0.5 and summary.loc["fgsm", "seconds"] == 1.5
        assert summary[["forward_passes", "backward_passes", "passes_per_image"]].isna().all().all()
        assert math.isnan(store.runs().loc[0, "forward_passes"])
        # a batch written after the upgrade records its passes; the run's total stays unknown
        samples = [SampleRow(2, 3, 3), SampleRow(3, 3, 3)]
        outcomes = [OutcomeRow(i, 0, "robust", 0.2, 0.01, 1) for i in (2, 3)]
        store.write_batch(1, 1, samples, outcomes, {0: 1.0}, {0: Passes(6, 2)}, Passes(2, 0))
        assert math.isnan(store.summary(1).loc["fgsm", "forward_passes"])
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_passes_are_summed_over_batches_and_divided_by_the_images(store):
    run_id = store.open_run("p", record("cascade"))
    for b in range(3):
        size = len(BATCHES[b])
        store.write_batch(run_id, b, *batch_rows(BATCHES[b], CASCADE), seconds=SECONDS,
                          passes={0: Passes(3 * size, size), 1: Passes(10, 4)}, clean=Passes(size, 0))
    summary = store.summary(run_id)
    assert summary.loc["clean", ["forward_passes", "backward_passes"]].tolist() == [10, 0]
    assert summary.loc["apgd-ce", ["forward_passes", "backward_passes"]].tolist() == [30, 10]
    assert summary.loc["apgd-t", ["forward_passes", "backward_passes"]].tolist() == [30, 12]
    assert summary.loc["worst case", ["forward_passes", "backward_passes"]].tolist() == [60, 22]
    assert summary.loc["worst case", "passes_per_image"] == pytest.approx(8.2)
    with pytest.raises(ValueError, match="passes"):
        store.write_batch(run_id, 0, *batch_rows(BATCHES[0], CASCADE), seconds={0: 1.0},
                          passes={1: Passes(1, 1)})


def _clock(monkeypatch, *moments: str) -> None:
    """Make the store stamp the given UTC times, in order (open, commits, finish)."""
    from robeval.results import store as store_module

    stamps = iter(f"2026-01-01T{moment}+00:00" for moment in moments)
    monkeypatch.setattr(store_module, "_now", lambda: next(stamps))


def test_working_seconds_of_an_evaluation_that_ran_through_equal_its_span(store, monkeypatch):
    _clock(monkeypatch, "10:00:00", "10:00:04", "10:00:09", "10:00:12", "10:00:13")
    run_id = toy_run(store, "independent")   # three batches, 3 s of attacks each
    store.finish_run(run_id)
    assert store.working_seconds(run_id) == 13.0


def test_working_seconds_leave_out_the_time_an_evaluation_lay_stopped(store, monkeypatch):
    # batch 1 is committed an hour after batch 0 (stopped, then resumed), the finish a day later
    _clock(monkeypatch, "10:00:00", "10:00:04", "11:00:07", "11:00:10", "23:00:00")
    run_id = toy_run(store, "independent")
    assert store.working_seconds(run_id) == 4 + 3 + 3   # the stopped batch counts its attacks
    store.finish_run(run_id)
    assert store.working_seconds(run_id) == 4 + 3 + 3   # and a late finish counts nothing
