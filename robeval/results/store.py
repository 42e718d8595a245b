"""`ResultsStore`: the connection (WAL, timeouts, migrations, transactions), runs and batches.

Its pandas views come from `robeval.results.views.StoreViews`; the layout is described in
`robeval.results`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robeval.errors import RobevalError
from robeval.results.corruptions import CorruptionViews
from robeval.results.records import (
    CorruptionRow,
    OutcomeRow,
    Passes,
    RunRecord,
    SampleRow,
    _dumps,
    _opt,
    stored_json,
)
from robeval.results.schema import (
    MODES,
    OUTCOMES,
    RESERVED_ROWS,
    SCHEMA_VERSION,
    migrate,
    ownership_problem,
)
from robeval.results.views import StoreViews

BUSY_TIMEOUT_S = 60.0

# Fields that decide what a run computes: resuming a key with other values would mix results.
_IDENTITY_FIELDS = ("dataset", "n", "eps", "norm", "seed", "batch_size", "mode", "attacks", "corruptions")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class ResultsStore(StoreViews, CorruptionViews):
    """Evaluation runs in one SQLite file (layout: see `robeval.results`; views: see `StoreViews`
    and `CorruptionViews`)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """Open or create the database at `path` (and its parent folder); errors are one line.

        With `readonly`, an existing store is opened for reading only: nothing is created,
        switched or migrated on disk, so a store on a read-only disk or shared read-only can be
        read; a store of an earlier schema version is read from a copy migrated in memory.
        """
        self.path, self.readonly = Path(path), readonly
        if self.path.is_dir():
            raise RobevalError(f"results store {self.path} is a folder, not a database file: "
                               "pass --db with the .sqlite file inside it")
        if readonly:
            self._db = self._connect_readonly()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise self._unwritable(err) from err
        try:
            self._refuse_foreign()
            self._configure()
            self._migrate()
        except RobevalError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise self._database_error(err) from err

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection to an existing store: of the current schema as it is, of an
        earlier one as a copy migrated in memory (the file is not touched)."""
        if not self.path.is_file():
            raise RobevalError(f"results store {self.path} does not exist: run `robeval attack` "
                               "first or pass --db")
        try:
            try:
                db, version = self._open_uri("mode=ro")
            except sqlite3.OperationalError:
                # A WAL store in a folder we may not write to: its shared-memory index cannot
                # be created, so read the file as it is (no other writer can be running there).
                db, version = self._open_uri("immutable=1")
        except sqlite3.DatabaseError as err:
            raise self._database_error(err) from err
        if 1 <= version < SCHEMA_VERSION and ownership_problem(db) is None:
            return self._migrated_copy(db)
        if version != SCHEMA_VERSION:
            db.close()
            what = "is empty or not a results store" if version == 0 else (
                f"has schema version {version}, not {SCHEMA_VERSION}")
            raise RobevalError(f"results database {self.path} {what}: pass --db with a store "
                               "written by `robeval attack` of this version")
        return db

    def _migrated_copy(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """An in-memory copy of the store open on `db` (then closed), migrated to `SCHEMA_VERSION`."""
        memory = sqlite3.connect(":memory:", isolation_level=None)
        try:
            db.backup(memory)
            memory.execute("BEGIN IMMEDIATE")
            migrate(memory, self.path)
            memory.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            memory.close()
            raise self._database_error(err) from err
        finally:
            db.close()
        return memory

    def _open_uri(self, flags: str) -> tuple[sqlite3.Connection, int]:
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{flags}", uri=True,
                             timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            return db, db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError:
            db.close()
            raise

    def _unwritable(self, err: BaseException) -> RobevalError:
        return RobevalError(
            f"cannot open results database {self.path} ({_one_line(err)}): "
            "pass --db with a writable file path"
        )

    def _database_error(self, err: BaseException) -> RobevalError:
        if isinstance(err, sqlite3.OperationalError) and "locked" in str(err):
            return RobevalError(
                f"results database {self.path} stayed locked by another process for "
                f"{BUSY_TIMEOUT_S:.0f} s: retry when it is done or pass --db with another path"
            )
        if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
            return RobevalError(
                f"the disk holding results database {self.path} is full ({_one_line(err)}): free "
                "space and rerun the same command; committed batches are kept"
            )
        if isinstance(err, sqlite3.OperationalError) and "readonly" in str(err):
            return RobevalError(f"results database {self.path} is read-only: pass --db with a "
                                "writable file path")
        if isinstance(err, sqlite3.OperationalError):
            return self._unwritable(err)
        return RobevalError(
            f"results database {self.path} is corrupt or not an SQLite file ({_one_line(err)}): "
            "move it away or pass --db with another path"
        )

    def _refuse_foreign(self) -> None:
        """A one-line error, before anything is written, when the file is not robeval's."""
        problem = ownership_problem(self._db)
        if problem:
            raise RobevalError(f"results database {self.path} {problem}: robeval changes nothing in "
                               "it; pass --db with a new file")

    def _configure(self) -> None:
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._db.execute("PRAGMA foreign_keys = ON")
        mode = self._enable_wal()
        if str(mode).lower() != "wal":
            raise RobevalError(
                f"results database {self.path} cannot use write-ahead logging (journal mode {mode}): "
                "pass --db with a path on a local disk"
            )

    def _enable_wal(self) -> str:
        """Switch to write-ahead logging, retrying while another process holds the file.

        SQLite answers a journal-mode change that races another connection with an immediate
        "database is locked" (its busy handler is not consulted), so the wait is done here.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        with self._write():
            migrate(self._db, self.path)

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction; lock timeouts and I/O errors become one-line errors."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise self._database_error(err) from err
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if isinstance(err, sqlite3.OperationalError):
                raise self._database_error(err) from err
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    # -- runs ---------------------------------------------------------------------------------

    def find_run(self, key: str) -> int | None:
        """The id of the run stored under `key`, or None."""
        row = self._db.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def open_run(self, key: str, record: RunRecord, fresh: bool = False) -> int:
        """The id of the run `key`: the stored one (to resume) or a new one with status 'running'.

        Resuming checks that the stored run computes the same thing (dataset, n, eps, norm, seed,
        batch size, mode, attack suite); a mismatch is a one-line error. With `fresh`, an existing
        run is emptied and its provenance replaced by `record`.
        """
        _check_record(record)
        key = str(key)
        with self._write() as db:
            row = db.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
            if row is None:
                return self._insert_run(key, record)
            if fresh:
                self._clear_run(row[0])
                self._replace_record(row[0], record)
            else:
                self._check_resume(key, self._record(row[0]), record)
            return row[0]

    def _insert_run(self, key: str, record: RunRecord) -> int:
        values = _record_values(record)
        columns = ", ".join(values)
        cursor = self._db.execute(
            f"INSERT INTO runs (key, {columns}, status, started_at) "
            f"VALUES (?, {', '.join('?' * len(values))}, 'running', ?)",
            (key, *values.values(), _now()),
        )
        self._insert_attacks(cursor.lastrowid, record.attacks)
        self._insert_corruptions(cursor.lastrowid, record.corruptions)
        return cursor.lastrowid

    def _insert_attacks(self, run_id: int, attacks: list[str]) -> None:
        self._db.executemany(
            "INSERT INTO attacks (run_id, position, spec) VALUES (?, ?, ?)",
            [(run_id, position, str(spec)) for position, spec in enumerate(attacks)],
        )

    def _insert_corruptions(self, run_id: int, conditions: list[tuple[str, int]]) -> None:
        self._db.executemany(
            "INSERT INTO corruptions (run_id, position, corruption, severity) VALUES (?, ?, ?, ?)",
            [(run_id, position, str(name), int(severity))
             for position, (name, severity) in enumerate(conditions)],
        )

    def _replace_record(self, run_id: int, record: RunRecord) -> None:
        values = _record_values(record)
        assignments = ", ".join(f"{column} = ?" for column in values)
        self._db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))
        self._db.execute("DELETE FROM attacks WHERE run_id = ?", (run_id,))
        self._db.execute("DELETE FROM corruptions WHERE run_id = ?", (run_id,))
        self._insert_attacks(run_id, record.attacks)
        self._insert_corruptions(run_id, record.corruptions)

    def _check_resume(self, key: str, stored: RunRecord, wanted: RunRecord) -> None:
        for name, old, new in zip(_IDENTITY_FIELDS, _identity(stored), _identity(wanted), strict=True):
            if old != new:
                raise RobevalError(
                    f"run {key!r} in {self.path} was started with {name}={old!r}, not {new!r}: "
                    "start it over with --fresh or pass --db with another path"
                )
        old_hash, new_hash = stored.checkpoint_hash, wanted.checkpoint_hash
        if old_hash and new_hash and old_hash != new_hash:
            raise RobevalError(
                f"run {key!r} in {self.path} was started with another checkpoint (sha256 "
                f"{old_hash[:12]}..., now {new_hash[:12]}...): start it over with --fresh"
            )

    def delete_run(self, run_id: int) -> None:
        """Delete the run and everything stored with it."""
        with self._write():
            run_id = self._require_run(run_id)
            self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def reset_run(self, run_id: int) -> None:
        """Delete the run's batches, samples, outcomes, seconds and notes; status back to 'running'."""
        with self._write():
            run_id = self._require_run(run_id)
            self._clear_run(run_id)

    def _clear_run(self, run_id: int) -> None:
        self._db.execute("DELETE FROM batches WHERE run_id = ?", (run_id,))
        self._db.execute(
            "UPDATE runs SET status = 'running', started_at = ?, finished_at = NULL, notes = '{}' "
            "WHERE id = ?",
            (_now(), run_id),
        )

    def finish_run(self, run_id: int) -> None:
        """Mark the run 'finished' now."""
        with self._write():
            run_id = self._require_run(run_id)
            self._db.execute(
                "UPDATE runs SET status = 'finished', finished_at = ? WHERE id = ?", (_now(), run_id)
            )

    def set_notes(self, run_id: int, notes: dict) -> None:
        """Merge `notes` into the run's notes (top-level keys of `notes` replace stored ones)."""
        with self._write():
            run_id = self._require_run(run_id)
            stored = self._notes(run_id)
            stored.update(notes)
            self._db.execute("UPDATE runs SET notes = ? WHERE id = ?", (_dumps(stored), run_id))

    def notes(self, run_id: int) -> dict:
        """The run's notes."""
        run_id = self._require_run(run_id)
        return self._notes(run_id)

    def _notes(self, run_id: int) -> dict:
        text = self._db.execute("SELECT notes FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
        return stored_json(text, self.path, f"the notes of run {run_id}")

    def _require_run(self, run_id: int) -> int:
        """`run_id` as a plain int (ids from a DataFrame are numpy ints); unknown ids are an error."""
        run_id = int(run_id)
        if self._db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RobevalError(f"no run with id {run_id} in {self.path}: pick an id listed by its runs table")
        return run_id

    def attacks(self, run_id: int) -> list[str]:
        """The run's attack specs in suite order."""
        run_id = self._require_run(run_id)
        rows = self._db.execute(
            "SELECT spec FROM attacks WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
        return [spec for (spec,) in rows]

    def run_record(self, run_id: int) -> RunRecord:
        """The provenance stored with the run."""
        with self._read():
            run_id = self._require_run(run_id)
            return self._record(run_id)

    def _record(self, run_id: int) -> RunRecord:
        names = [f.name for f in fields(RunRecord) if f.name not in ("attacks", "corruptions")]
        row = self._db.execute(f"SELECT {', '.join(names)} FROM runs WHERE id = ?", (run_id,)).fetchone()
        values = dict(zip(names, row, strict=True))
        for key in ("config", "versions"):
            values[key] = stored_json(values[key], self.path, f"the {key} of run {run_id}")
        return RunRecord(**values, attacks=self.attacks(run_id),
                         corruptions=self.corruption_conditions(run_id))

    # -- batches ------------------------------------------------------------------------------

    def done_batches(self, run_id: int) -> set[int]:
        """Indices of the run's committed batches."""
        run_id = int(run_id)
        rows = self._db.execute("SELECT batch_index FROM batches WHERE run_id = ?", (run_id,)).fetchall()
        return {index for (index,) in rows}

    def write_batch(self, run_id: int, batch_index: int, samples: list[SampleRow],
                    outcomes: list[OutcomeRow], seconds: dict[int, float],
                    passes: dict[int, Passes] | None = None, clean: Passes | None = None,
                    notes: dict[int, dict] | None = None,
                    corruptions: CorruptionBatch | None = None) -> None:
        """Commit one batch in one transaction: samples, outcomes, seconds, passes and notes per
        attack position, the clean pass's passes, the corruption outcomes, marker.

        Writing a batch that is already committed replaces it. Every sample needs exactly one
        outcome per attack of the suite and one corruption outcome per corruption condition of the
        run; a batch that breaks this is a ValueError and nothing is written. Passes left out are
        stored as unknown (NULL).
        """
        batch_index = int(batch_index)
        corruptions = corruptions or CorruptionBatch()
        with self._write() as db:
            run_id = self._require_run(run_id)
            positions = len(self.attacks(run_id))
            _check_batch(batch_index, samples, outcomes, seconds, positions)
            _check_corruptions(batch_index, samples, corruptions, len(self.corruption_conditions(run_id)))
            if passes and set(passes) - set(seconds):
                raise ValueError(f"batch {batch_index} has passes for a position without seconds")
            db.execute("DELETE FROM batches WHERE run_id = ? AND batch_index = ?", (run_id, batch_index))
            db.execute(
                "INSERT INTO batches (run_id, batch_index, committed_at, clean_forward_passes) "
                "VALUES (?, ?, ?, ?)",
                (run_id, batch_index, _now(), None if clean is None else int(clean.forward)),
            )
            try:
                self._insert_batch_rows(run_id, batch_index, samples, outcomes, seconds, passes or {},
                                        notes or {})
                self._insert_corruption_rows(run_id, batch_index, corruptions)
            except sqlite3.IntegrityError as err:
                message = f"batch {batch_index} of run {run_id} conflicts with stored rows: {err}"
                raise ValueError(message) from err

    def _insert_batch_rows(self, run_id: int, batch_index: int, samples: list[SampleRow],
                           outcomes: list[OutcomeRow], seconds: dict[int, float],
                           passes: dict[int, Passes], notes: dict[int, dict]) -> None:
        self._db.executemany(
            "INSERT INTO samples (run_id, sample_index, batch_index, label, clean_pred) "
            "VALUES (?, ?, ?, ?, ?)",
            [(run_id, int(s.index), batch_index, int(s.label), int(s.clean_pred)) for s in samples],
        )
        self._db.executemany(
            "INSERT INTO outcomes (run_id, sample_index, position, outcome, margin, perturbation_norm, "
            "iterations) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, int(o.index), int(o.position), str(o.outcome), _opt(float, o.margin),
              _opt(float, o.perturbation_norm), _opt(int, o.iterations)) for o in outcomes],
        )
        self._db.executemany(
            "INSERT INTO attack_seconds (run_id, batch_index, position, seconds, forward_passes, "
            "backward_passes, notes) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, batch_index, int(position), float(value), *_pass_values(passes.get(position)),
              _dumps(notes[position]) if position in notes else None)
             for position, value in seconds.items()],
        )


    def _insert_corruption_rows(self, run_id: int, batch_index: int, batch: CorruptionBatch) -> None:
        self._db.executemany(
            "INSERT INTO corruption_outcomes (run_id, sample_index, position, prediction, margin) "
            "VALUES (?, ?, ?, ?, ?)",
            [(run_id, int(row.index), int(row.position), int(row.prediction), _opt(float, row.margin))
             for row in batch.rows],
        )
        self._db.executemany(
            "INSERT INTO corruption_seconds (run_id, batch_index, position, seconds, forward_passes, "
            "backward_passes) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, batch_index, int(position), float(value), *_pass_values(batch.passes.get(position)))
             for position, value in batch.seconds.items()],
        )


@dataclass
class CorruptionBatch:
    """The corruption results of one batch: a row per (sample, condition), and each condition's
    seconds and image-passes on the batch."""

    rows: list[CorruptionRow] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)
    passes: dict[int, Passes] = field(default_factory=dict)


def _pass_values(passes: Passes | None) -> tuple[int | None, int | None]:
    """(forward, backward) as plain ints for the database; (None, None) when not recorded."""
    return (None, None) if passes is None else (int(passes.forward), int(passes.backward))


def _record_values(record: RunRecord) -> dict[str, Any]:
    """Column values of `record` for the runs table: JSON for dicts, plain numbers and strings."""
    values = {name: None if value is None else str(value) for name, value in asdict(record).items()}
    del values["attacks"], values["corruptions"]
    values.update(config=_dumps(record.config), versions=_dumps(record.versions), n=int(record.n),
                  eps=float(record.eps), seed=int(record.seed), batch_size=int(record.batch_size))
    return values


def _identity(record: RunRecord) -> tuple:
    """The `_IDENTITY_FIELDS` of `record` as plain Python values, for comparison."""
    return (str(record.dataset), int(record.n), float(record.eps), str(record.norm), int(record.seed),
            int(record.batch_size), str(record.mode), [str(spec) for spec in record.attacks],
            [(str(name), int(severity)) for name, severity in record.corruptions])


def _check_record(record: RunRecord) -> None:
    """Reject suites the views could not tell apart, repeated corruption conditions, unknown modes."""
    if record.mode not in MODES:
        raise RobevalError(f"unknown evaluation mode {record.mode!r}: use one of {', '.join(MODES)}")
    specs = [str(spec) for spec in record.attacks]
    for spec in specs:
        if specs.count(spec) > 1 or spec in RESERVED_ROWS:
            raise RobevalError(
                f"attack suite lists {spec!r} twice or uses a reserved name ({', '.join(RESERVED_ROWS)}): "
                "give each attack a distinct spec"
            )
    conditions = [(str(name), int(severity)) for name, severity in record.corruptions]
    if len(set(conditions)) != len(conditions) or any(not 1 <= s <= 5 for _, s in conditions):
        raise RobevalError("corruption conditions repeat or have a severity outside 1..5: list each "
                           "(type, severity) once")


def _check_batch(batch_index: int, samples: list[SampleRow], outcomes: list[OutcomeRow],
                 seconds: dict[int, float], positions: int) -> None:
    """ValueError unless every sample has exactly one valid outcome per attack position."""
    indices = [int(s.index) for s in samples]
    if len(set(indices)) != len(indices):
        raise ValueError(f"batch {batch_index} lists a sample index twice")
    expected = {(index, position) for index in indices for position in range(positions)}
    got = [(int(o.index), int(o.position)) for o in outcomes]
    if len(got) != len(set(got)) or set(got) != expected:
        raise ValueError(
            f"batch {batch_index} needs exactly one outcome per sample and attack position "
            f"({len(indices)} x {positions}), got {len(got)} that do not match"
        )
    bad = {o.outcome for o in outcomes} - set(OUTCOMES)
    if bad:
        raise ValueError(f"batch {batch_index} has outcomes {sorted(bad)}; allowed: {', '.join(OUTCOMES)}")
    if any(not 0 <= int(position) < positions for position in seconds):
        raise ValueError(f"batch {batch_index} has seconds for a position outside 0..{positions - 1}")


def _check_corruptions(batch_index: int, samples: list[SampleRow], batch: CorruptionBatch,
                       conditions: int) -> None:
    """ValueError unless every sample has exactly one corruption outcome per condition."""
    expected = {(int(sample.index), position) for sample in samples for position in range(conditions)}
    got = [(int(row.index), int(row.position)) for row in batch.rows]
    if len(got) != len(set(got)) or set(got) != expected:
        raise ValueError(
            f"batch {batch_index} needs exactly one corruption outcome per sample and condition "
            f"({len(samples)} x {conditions}), got {len(got)} that do not match"
        )
    if any(not 0 <= int(position) < conditions for position in (*batch.seconds, *batch.passes)):
        raise ValueError(f"batch {batch_index} has corruption seconds or passes for a condition outside "
                         f"0..{conditions - 1}")
