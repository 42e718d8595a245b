"""Results store: evaluation runs in one SQLite file, committed batch by batch, read back as pandas.

A *run* is one model evaluated on the first `n` test images against a *suite* of attacks (attack
spec strings at positions 0..k-1). For every (sample, position) the store keeps an outcome:
'robust' (attacked and survived), 'broken' (attacked, some iterate misclassified) or 'skipped'
(not attacked: misclassified clean or, in mode 'cascade', broken by an earlier attack).

Layout (``PRAGMA user_version`` = `SCHEMA_VERSION`; later versions migrate with `_MIGRATIONS`):

- ``runs``: id, key (unique), the `RunRecord` fields (``config``, ``versions`` and ``notes`` as JSON
  text; ``attacks`` live in their own table), status ('running' | 'finished'), started_at and
  finished_at (ISO 8601, UTC).
- ``attacks`` (run_id, position, spec): the suite, in order.
- ``batches`` (run_id, batch_index, committed_at, clean_forward_passes): a row means the batch
  is complete; clean_forward_passes is the image-forwards of its clean classification.
- ``attack_seconds`` (run_id, batch_index, position, seconds, forward_passes, backward_passes,
  notes): the attack's time and image-passes on the batch (see `robeval.attacks.cost`), and what
  the engine noted about it (JSON, see `AttackNotes`).
- ``samples`` (run_id, sample_index, batch_index, label, clean_pred).
- ``outcomes`` (run_id, sample_index, position, outcome, margin, perturbation_norm, iterations).

Pass counts are NULL in rows written before schema version 2; views show them as NaN. Notes are
NULL in rows written before schema version 3.

Deleting a run deletes everything of it; deleting a batch deletes its samples, their outcomes and
its seconds (foreign keys with ON DELETE CASCADE). Samples are only ever written together with
their batch marker, so every stored sample belongs to a committed batch.

Several processes may write to one file at once: the database is in WAL mode, waits up to
`BUSY_TIMEOUT_S` for a lock, and every write is one short ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pandas as pd

from robeval.errors import RobevalError

SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 60.0
OUTCOMES = ("robust", "broken", "skipped")
MODES = ("cascade", "independent")
RESERVED_ROWS = ("clean", "worst case")

_SCHEMA_V1 = [
    """CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,
        checkpoint_hash TEXT,
        config TEXT NOT NULL,
        dataset TEXT NOT NULL,
        n INTEGER NOT NULL,
        eps REAL NOT NULL,
        norm TEXT NOT NULL,
        seed INTEGER NOT NULL,
        batch_size INTEGER NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('cascade', 'independent')),
        versions TEXT NOT NULL,
        device TEXT NOT NULL,
        git_commit TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'finished')),
        started_at TEXT NOT NULL,
        finished_at TEXT,
        notes TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE IF NOT EXISTS attacks (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        position INTEGER NOT NULL CHECK (position >= 0),
        spec TEXT NOT NULL,
        PRIMARY KEY (run_id, position),
        UNIQUE (run_id, spec)
    )""",
    """CREATE TABLE IF NOT EXISTS batches (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        batch_index INTEGER NOT NULL,
        committed_at TEXT NOT NULL,
        PRIMARY KEY (run_id, batch_index)
    )""",
    """CREATE TABLE IF NOT EXISTS attack_seconds (
        run_id INTEGER NOT NULL,
        batch_index INTEGER NOT NULL,
        position INTEGER NOT NULL,
        seconds REAL NOT NULL,
        PRIMARY KEY (run_id, batch_index, position),
        FOREIGN KEY (run_id, batch_index) REFERENCES batches(run_id, batch_index) ON DELETE CASCADE,
        FOREIGN KEY (run_id, position) REFERENCES attacks(run_id, position) ON DELETE CASCADE
    )""",
    """CREATE TABLE IF NOT EXISTS samples (
        run_id INTEGER NOT NULL,
        sample_index INTEGER NOT NULL,
        batch_index INTEGER NOT NULL,
        label INTEGER NOT NULL,
        clean_pred INTEGER NOT NULL,
        PRIMARY KEY (run_id, sample_index),
        FOREIGN KEY (run_id, batch_index) REFERENCES batches(run_id, batch_index) ON DELETE CASCADE
    )""",
    "CREATE INDEX IF NOT EXISTS samples_by_batch ON samples (run_id, batch_index)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        run_id INTEGER NOT NULL,
        sample_index INTEGER NOT NULL,
        position INTEGER NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('robust', 'broken', 'skipped')),
        margin REAL,
        perturbation_norm REAL,
        iterations INTEGER,
        PRIMARY KEY (run_id, sample_index, position),
        FOREIGN KEY (run_id, sample_index) REFERENCES samples(run_id, sample_index) ON DELETE CASCADE,
        FOREIGN KEY (run_id, position) REFERENCES attacks(run_id, position) ON DELETE CASCADE
    )""",
]

# Version 2 adds the image-passes of every attack and of the clean pass; rows of stores written
# before it keep NULL there (cost unknown).
_V1_TO_V2 = [
    "ALTER TABLE attack_seconds ADD COLUMN forward_passes INTEGER",
    "ALTER TABLE attack_seconds ADD COLUMN backward_passes INTEGER",
    "ALTER TABLE batches ADD COLUMN clean_forward_passes INTEGER",
]

# Version 3 adds what the engine noted about each attack on each batch (JSON): the masking gate
# of aa-fast, breaks the attack claimed that a fresh pass did not confirm, examples projected back
# into the threat model, majority verdicts of a random model.
_V2_TO_V3 = ["ALTER TABLE attack_seconds ADD COLUMN notes TEXT"]

# _MIGRATIONS[v] brings a database from user_version v to v + 1.
_MIGRATIONS: list[list[str]] = [_SCHEMA_V1, _V1_TO_V2, _V2_TO_V3]

# Fields that decide what a run computes: resuming a key with other values would mix results.
_IDENTITY_FIELDS = ("dataset", "n", "eps", "norm", "seed", "batch_size", "mode", "attacks")


@dataclass
class RunRecord:
    """Provenance saved with a run."""

    model: str
    checkpoint_hash: str | None
    config: dict
    dataset: str
    n: int
    eps: float
    norm: str
    seed: int
    batch_size: int
    mode: str
    attacks: list[str]
    versions: dict
    device: str
    git_commit: str | None


@dataclass
class SampleRow:
    """One test sample of a batch: its index in the test set, label and clean prediction."""

    index: int
    label: int
    clean_pred: int


@dataclass(frozen=True)
class Passes:
    """Image-passes through the model: a forward on 64 images is 64 forwards (same for backward)."""

    forward: int
    backward: int


@dataclass
class AttackNotes:
    """What the engine noted about one attack, added up over batches.

    `gate_batches` / `gate_fired`: batches on which the attack ran a masking gate (aa-fast) and
    on how many it fired; `gate_flags`: the checks that opened it; `unconfirmed`: breaks the
    attack claimed that a fresh forward pass did not confirm (counted robust); `projected`:
    examples outside the threat model, projected back before being judged; `majority`: batches
    judged by the majority of several passes because the model's outputs are random.
    """

    gate_batches: int = 0
    gate_fired: int = 0
    gate_flags: list[str] = field(default_factory=list)
    unconfirmed: int = 0
    projected: int = 0
    majority: int = 0

    def add(self, notes: dict) -> None:
        """Add one batch's notes (as the engine writes them)."""
        gate = notes.get("gate")
        if gate is not None:
            self.gate_batches += 1
            self.gate_fired += bool(gate.get("fired"))
            for flag in gate.get("flags", []):
                name = str(flag).split(":", 1)[0]
                if name not in self.gate_flags:
                    self.gate_flags.append(name)
        self.unconfirmed += int(notes.get("unconfirmed", 0))
        self.projected += int(notes.get("projected", 0))
        self.majority += bool(notes.get("majority"))

    def lines(self, spec: str) -> list[str]:
        """One line per thing worth saying about the attack `spec` (none for a plain run)."""
        said = []
        if self.gate_batches:
            opened = f" by {', '.join(self.gate_flags)}" if self.gate_flags else ""
            said.append(f"{spec}: masking gate fired on {self.gate_fired} of {self.gate_batches} "
                        f"batches{opened}" + (" (Square ran there)" if self.gate_fired else ""))
        if self.unconfirmed:
            said.append(f"{spec}: {self.unconfirmed} claimed breaks not confirmed by a fresh forward "
                        "pass (counted robust)")
        if self.projected:
            said.append(f"{spec}: {self.projected} examples outside the threat model were projected "
                        "back before being judged")
        if self.majority:
            said.append(f"{spec}: the model's outputs are random; verdicts on {self.majority} "
                        "batches are the majority of 9 passes (try pgdK(eot=M))")
        return said


@dataclass
class OutcomeRow:
    """What the attack at suite `position` did to sample `index`."""

    index: int
    position: int
    outcome: str
    margin: float | None
    perturbation_norm: float | None
    iterations: int | None


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for `correct` successes out of `n`; (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _dumps(value: dict) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default)


def _opt(kind: type, value: Any) -> Any:
    """`value` as a plain int or float (numpy and torch scalars too); None and NaN stay missing."""
    if value is None:
        return None
    value = kind(value)
    return None if isinstance(value, float) and math.isnan(value) else value


class ResultsStore:
    """Evaluation runs in one SQLite file (see the module docstring for the layout)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        """Open or create the database at `path` (and its parent folder); errors are one line.

        With `readonly`, an existing store is opened for reading only: nothing is created,
        switched or migrated, so a store on a read-only disk or shared read-only can be read.
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
            self._configure()
            self._migrate()
        except RobevalError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise self._database_error(err) from err

    def _connect_readonly(self) -> sqlite3.Connection:
        """A read-only connection to an existing store of the current schema."""
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
        if version != SCHEMA_VERSION:
            db.close()
            what = "is empty or not a results store" if version == 0 else (
                f"has schema version {version}, not {SCHEMA_VERSION}")
            raise RobevalError(f"results database {self.path} {what}: pass --db with a store "
                               "written by `robeval attack` of this version")
        return db

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
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RobevalError(
                    f"results database {self.path} has schema version {version}, newer than this "
                    f"robeval knows ({SCHEMA_VERSION}): upgrade robeval or pass --db with another path"
                )
            for step, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {step}")

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
        return cursor.lastrowid

    def _insert_attacks(self, run_id: int, attacks: list[str]) -> None:
        self._db.executemany(
            "INSERT INTO attacks (run_id, position, spec) VALUES (?, ?, ?)",
            [(run_id, position, str(spec)) for position, spec in enumerate(attacks)],
        )

    def _replace_record(self, run_id: int, record: RunRecord) -> None:
        values = _record_values(record)
        assignments = ", ".join(f"{column} = ?" for column in values)
        self._db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*values.values(), run_id))
        self._db.execute("DELETE FROM attacks WHERE run_id = ?", (run_id,))
        self._insert_attacks(run_id, record.attacks)

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
        return json.loads(self._db.execute("SELECT notes FROM runs WHERE id = ?", (run_id,)).fetchone()[0])

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
        names = [f.name for f in fields(RunRecord) if f.name != "attacks"]
        row = self._db.execute(f"SELECT {', '.join(names)} FROM runs WHERE id = ?", (run_id,)).fetchone()
        values = dict(zip(names, row, strict=True))
        values["config"], values["versions"] = json.loads(values["config"]), json.loads(values["versions"])
        return RunRecord(**values, attacks=self.attacks(run_id))

    # -- batches ------------------------------------------------------------------------------

    def done_batches(self, run_id: int) -> set[int]:
        """Indices of the run's committed batches."""
        run_id = int(run_id)
        rows = self._db.execute("SELECT batch_index FROM batches WHERE run_id = ?", (run_id,)).fetchall()
        return {index for (index,) in rows}

    def write_batch(self, run_id: int, batch_index: int, samples: list[SampleRow],
                    outcomes: list[OutcomeRow], seconds: dict[int, float],
                    passes: dict[int, Passes] | None = None, clean: Passes | None = None,
                    notes: dict[int, dict] | None = None) -> None:
        """Commit one batch in one transaction: samples, outcomes, seconds, passes and notes per
        attack position, the clean pass's passes, marker.

        Writing a batch that is already committed replaces it. Every sample needs exactly one
        outcome per attack of the suite; a batch that breaks this is a ValueError and nothing is
        written. Passes left out are stored as unknown (NULL).
        """
        batch_index = int(batch_index)
        with self._write() as db:
            run_id = self._require_run(run_id)
            positions = len(self.attacks(run_id))
            _check_batch(batch_index, samples, outcomes, seconds, positions)
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

    # -- pandas views -------------------------------------------------------------------------

    def runs(self) -> pd.DataFrame:
        """One row per run, by id: key, the `RunRecord` fields, status, times, notes, progress.

        ``config``, ``versions`` and ``notes`` are parsed back to dicts and ``attacks`` to a list;
        ``started_at``/``finished_at`` are UTC timestamps (NaT while running); ``batches`` and
        ``samples`` count what is committed; ``forward_passes``, ``backward_passes`` and
        ``passes_per_image`` are the image-passes of all its attacks over committed batches (not
        the clean pass; NaN where a batch did not record them, as in the 'worst case' row of
        `summary`).
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
        suites = attacks.groupby("run_id")["spec"].agg(list)
        suite_column = pd.Series([suites.get(run_id, []) for run_id in frame["id"]], index=frame.index,
                                 dtype=object)
        frame.insert(frame.columns.get_loc("versions"), "attacks", suite_column)
        for column in ("config", "versions", "notes"):
            frame[column] = frame[column].map(json.loads)
        for column in ("started_at", "finished_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        integers = {column: "int64" for column in ("id", "n", "seed", "batch_size", "batches", "samples")}
        frame = frame.astype({**integers, "eps": float, "forward_passes": float, "backward_passes": float})
        frame["passes_per_image"] = ((frame["forward_passes"] + frame["backward_passes"])
                                     / frame["samples"].where(frame["samples"] > 0))
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

        Rows (index 'attack'): 'clean', each attack spec in suite order, 'worst case'. Columns:
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
        clean, robust = frame["clean_correct"], _robust_under(frame, record.attacks)
        seconds = self._seconds(run_id, len(record.attacks))
        passes = self._passes(run_id, len(record.attacks))
        rows = [("clean", int(clean.sum()), math.nan, self._clean_passes(run_id))]
        running = clean
        for position, spec in enumerate(record.attacks):
            running = running & robust[spec] if record.mode == "cascade" else clean & robust[spec]
            rows.append((spec, int(running.sum()), seconds[position], passes[position]))
        total = (sum(forward for forward, _ in passes), sum(backward for _, backward in passes))
        rows.append(("worst case", int(frame["robust"].sum()), float(sum(seconds)), total))
        return _summary_frame(rows, len(frame), confidence)

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
                totals[specs[position]].add(json.loads(text))
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


def _pass_values(passes: Passes | None) -> tuple[int | None, int | None]:
    """(forward, backward) as plain ints for the database; (None, None) when not recorded."""
    return (None, None) if passes is None else (int(passes.forward), int(passes.backward))


def _record_values(record: RunRecord) -> dict[str, Any]:
    """Column values of `record` for the runs table: JSON for dicts, plain numbers and strings."""
    values = {name: None if value is None else str(value) for name, value in asdict(record).items()}
    del values["attacks"]
    values.update(config=_dumps(record.config), versions=_dumps(record.versions), n=int(record.n),
                  eps=float(record.eps), seed=int(record.seed), batch_size=int(record.batch_size))
    return values


def _identity(record: RunRecord) -> tuple:
    """The `_IDENTITY_FIELDS` of `record` as plain Python values, for comparison."""
    return (str(record.dataset), int(record.n), float(record.eps), str(record.norm), int(record.seed),
            int(record.batch_size), str(record.mode), [str(spec) for spec in record.attacks])


def _check_record(record: RunRecord) -> None:
    """Reject suites the views could not tell apart and unknown modes."""
    if record.mode not in MODES:
        raise RobevalError(f"unknown evaluation mode {record.mode!r}: use one of {', '.join(MODES)}")
    specs = [str(spec) for spec in record.attacks]
    for spec in specs:
        if specs.count(spec) > 1 or spec in RESERVED_ROWS:
            raise RobevalError(
                f"attack suite lists {spec!r} twice or uses a reserved name ({', '.join(RESERVED_ROWS)}): "
                "give each attack a distinct spec"
            )


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
