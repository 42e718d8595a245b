"""The store's schema: its version, the statements that create and migrate it, the values it allows.

`migrate` brings an open database to `SCHEMA_VERSION`; the layout is described in `robeval.results`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from robeval.errors import RobevalError

SCHEMA_VERSION = 4
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

# Version 4 adds the common corruptions: the (type, severity) conditions of a run, the prediction
# and margin of every sample under each, and each condition's time and passes per batch. Stores
# written before it hold no corruption results.
_V3_TO_V4 = [
    """CREATE TABLE IF NOT EXISTS corruptions (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        position INTEGER NOT NULL CHECK (position >= 0),
        corruption TEXT NOT NULL,
        severity INTEGER NOT NULL CHECK (severity BETWEEN 1 AND 5),
        PRIMARY KEY (run_id, position),
        UNIQUE (run_id, corruption, severity)
    )""",
    """CREATE TABLE IF NOT EXISTS corruption_seconds (
        run_id INTEGER NOT NULL,
        batch_index INTEGER NOT NULL,
        position INTEGER NOT NULL,
        seconds REAL NOT NULL,
        forward_passes INTEGER,
        backward_passes INTEGER,
        PRIMARY KEY (run_id, batch_index, position),
        FOREIGN KEY (run_id, batch_index) REFERENCES batches(run_id, batch_index) ON DELETE CASCADE,
        FOREIGN KEY (run_id, position) REFERENCES corruptions(run_id, position) ON DELETE CASCADE
    )""",
    """CREATE TABLE IF NOT EXISTS corruption_outcomes (
        run_id INTEGER NOT NULL,
        sample_index INTEGER NOT NULL,
        position INTEGER NOT NULL,
        prediction INTEGER NOT NULL,
        margin REAL,
        PRIMARY KEY (run_id, sample_index, position),
        FOREIGN KEY (run_id, sample_index) REFERENCES samples(run_id, sample_index) ON DELETE CASCADE,
        FOREIGN KEY (run_id, position) REFERENCES corruptions(run_id, position) ON DELETE CASCADE
    )""",
]

# _MIGRATIONS[v] brings a database from user_version v to v + 1.
_MIGRATIONS: list[list[str]] = [_SCHEMA_V1, _V1_TO_V2, _V2_TO_V3, _V3_TO_V4]


APPLICATION_ID = 0x52424556   # "RBEV": SQLite's header field that marks a file as robeval's
ROBEVAL_TABLES = frozenset({"runs", "attacks", "batches", "attack_seconds", "samples", "outcomes",
                            "corruptions", "corruption_seconds", "corruption_outcomes"})


def ownership_problem(db: sqlite3.Connection) -> str | None:
    """Why robeval must not write to the database open on `db` (None: it may).

    robeval writes to a store it created (marked with `APPLICATION_ID`), to a new or empty file,
    or to an unmarked store written by an earlier robeval (its user_version and exactly its
    tables), never to another program's database. Only reads are made here, in one read
    transaction: a store that another process is creating is seen before its creation or after
    it, never with its tables made and its version not yet set.
    """
    application_id, version, tables = _identity(db)
    if application_id == APPLICATION_ID or (application_id == 0 and version == 0 and not tables):
        return None
    if application_id == 0 and 1 <= version <= len(_MIGRATIONS) and tables <= ROBEVAL_TABLES \
            and "runs" in tables:
        return None
    if application_id:
        return f"is marked as another program's database (application_id {application_id:#x})"
    listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return f"is not a robeval store (it holds the tables {listed or 'none'}, user_version {version})"


def _identity(db: sqlite3.Connection) -> tuple[int, int, set[str]]:
    """The database's application_id, user_version and table names, read from one snapshot."""
    own_transaction = not db.in_transaction
    if own_transaction:
        db.execute("BEGIN")
    try:
        tables = {name for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        if own_transaction:
            db.execute("COMMIT")
    return application_id, version, tables


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the store at `path`, open on `db` inside a write transaction, to `SCHEMA_VERSION`.

    A store newer than this robeval knows is a one-line error.
    """
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RobevalError(
            f"results database {path} has schema version {version}, newer than this "
            f"robeval knows ({SCHEMA_VERSION}): upgrade robeval or pass --db with another path"
        )
    for step, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
        for statement in statements:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {step}")
    if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
