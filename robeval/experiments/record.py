"""A study's record: what the reproduction page reads of each finished cell, in one small file
that is kept with the repository.

A cell's numbers live in its run folder and its study's results store, which hold the model
weights (about a megabyte a cell) and stay out of git. The record keeps, per finished cell, the
per-image flags its findings are computed from, its training history (for the per-epoch
figures), the seconds its training and evaluation took and the keys that tie it to the protocol
it ran under: a digest of the cell's whole training configuration and one of the study's
evaluation settings. So docs/reproduction.md can be rebuilt, and a reproduction stopped on one
machine continued on another, without the run folders:

* an entry whose keys differ from the study file's is stale (the protocol changed) and is
  dropped, so a number of another protocol never reaches the page;
* each entry carries a sha256 of its own content: an entry edited by hand or cut short is a
  one-line error naming the file and the fix, never a number;
* a run given the record (`robeval run --record`) skips the cells it holds.

One JSON line per cell, in the study's cell order, written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robeval.checkpoints import atomic_write_text, read_jsonl
from robeval.errors import RobevalError
from robeval.experiments.grid import Cell, cells, config_key, run_dir, setting_key
from robeval.experiments.report import Measurements, flag_series, metric_flags
from robeval.experiments.run import reused_from
from robeval.experiments.spec import CellResult, Experiment
from robeval.results import ResultsStore

RECORD_VERSION = 1


@dataclass
class CellRecord:
    """One finished cell as the reproduction page needs it."""

    cell: str
    seed: int
    train_key: str                  # digest of the cell's whole training configuration
    eval_key: str                   # digest of the study's attack settings and evaluated checkpoint
    model_sha256: str | None        # the evaluated checkpoint's sha256, as the results store has it
    index: list[int]                # test-image indices the flags refer to
    flags: dict[str, list[bool]]    # metric -> per-image flag (clean, each attack, worst case)
    training_seconds: float         # its own training (0 when it reused another study's run)
    evaluation_seconds: float       # the evaluation's working seconds (a stop left out)
    reused_from: str | None = None  # the run folder whose training it reused
    history: list[dict[str, Any]] = field(default_factory=list)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_key(cell: Cell) -> str:
    """The digest a cell's entry must carry: its whole training configuration (seed and data
    folder included)."""
    return _digest(config_key(cell))


def eval_key(experiment: Experiment) -> str:
    """The digest of how a study evaluates its cells: its attack settings and checkpoint choice."""
    return _digest(json.dumps({"attack": experiment.attack, "checkpoint": experiment.checkpoint},
                              sort_keys=True, default=str))


def record_path(experiment: Experiment, folder: Path) -> Path:
    """Where a study's record lives in `folder`."""
    return Path(folder) / f"{experiment.name}.jsonl"


def cell_record(experiment: Experiment, result: CellResult, root: Path,
                store: ResultsStore) -> CellRecord:
    """The record of a cell whose training and evaluation finished under `root`."""
    folder = run_dir(experiment, result.cell, root)
    history = read_jsonl(folder / "history.jsonl")
    origin = reused_from(folder)
    flags = metric_flags(store, result.run_id)
    index = store.per_sample(result.run_id)["index"].astype(int).tolist()
    return CellRecord(
        cell=result.cell.name, seed=result.cell.seed, train_key=train_key(result.cell),
        eval_key=eval_key(experiment), model_sha256=store.run_record(result.run_id).checkpoint_hash,
        index=index,
        flags={metric: [bool(v) for v in values] for metric, values in flags.items()},
        training_seconds=0.0 if origin else sum(float(row.get("time", 0.0)) for row in history),
        evaluation_seconds=store.working_seconds(result.run_id), reused_from=origin,
        history=history)


# --- the file -----------------------------------------------------------------------------------

def _pack(values: list[bool]) -> str:
    return np.packbits(np.asarray(values, dtype=bool)).tobytes().hex()


def _unpack(text: str, count: int) -> list[bool]:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))
    if len(bits) < count:
        raise ValueError("too few flags")
    return bits[:count].astype(bool).tolist()


def _pack_index(index: list[int]) -> dict[str, Any]:
    if index and index == list(range(index[0], index[0] + len(index))):
        return {"first": index[0], "count": len(index)}
    return {"list": index}


def _unpack_index(packed: dict[str, Any]) -> list[int]:
    if "list" in packed:
        return [int(i) for i in packed["list"]]
    return list(range(int(packed["first"]), int(packed["first"]) + int(packed["count"])))


def _to_line(record: CellRecord) -> str:
    body = asdict(record)
    body["index"] = _pack_index(record.index)
    body["flags"] = {metric: _pack(values) for metric, values in record.flags.items()}
    text = json.dumps(body, sort_keys=True)
    return json.dumps({"version": RECORD_VERSION, "sha256": hashlib.sha256(text.encode()).hexdigest(),
                       "entry": body}, sort_keys=True)


def _from_row(row: dict[str, Any]) -> CellRecord:
    body = row["entry"]
    text = json.dumps(body, sort_keys=True)
    if row.get("version") != RECORD_VERSION or hashlib.sha256(text.encode()).hexdigest() != row["sha256"]:
        raise ValueError("its content does not match its sha256")
    index = _unpack_index(body["index"])
    flags = {metric: _unpack(bits, len(index)) for metric, bits in body["flags"].items()}
    return CellRecord(**{**body, "index": index, "flags": flags})


def read_record(experiment: Experiment, path: Path) -> tuple[dict[str, CellRecord], int]:
    """The entries of `path` that belong to the study's present protocol, by cell name, and how
    many stale ones (another protocol, or a cell the study no longer has) were left out. A
    missing file holds none; a damaged one is a one-line error."""
    path = Path(path)
    try:
        rows = read_jsonl(path)
        entries = [_from_row(row) for row in rows]
    except (ValueError, KeyError, TypeError) as err:
        raise RobevalError(f"reproduction record {path} is damaged ({err}): restore it with "
                           f"`git checkout -- {path}` or remove it to run its cells again") from None
    wanted = {cell.name: train_key(cell) for cell in cells(experiment)}
    evaluation = eval_key(experiment)
    current = {e.cell: e for e in entries
               if wanted.get(e.cell) == e.train_key and e.eval_key == evaluation}
    return current, len(entries) - len(current)


def write_record(experiment: Experiment, path: Path, entries: dict[str, CellRecord]) -> None:
    """Write the study's entries to `path` atomically, one line per cell in the study's order."""
    lines = [_to_line(entries[cell.name]) for cell in cells(experiment) if cell.name in entries]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def recorded_cells(experiment: Experiment, folder: Path | None) -> set[str]:
    """Names of the study's cells that `folder`'s record holds for its present protocol."""
    if folder is None:
        return set()
    return set(read_record(experiment, record_path(experiment, folder))[0])


def record_measurements(experiment: Experiment, entries: dict[str, CellRecord]) -> Measurements:
    """The entries' per-image flags by setting and seed, as `experiments.measurements` gives
    them from a store ('robust' is the worst case, as there)."""
    by_name = {cell.name: cell for cell in cells(experiment)}
    measured: Measurements = {}
    for entry in entries.values():
        measured.setdefault(setting_key(by_name[entry.cell]), {})[entry.seed] = flag_series(
            entry.flags, entry.index)
    return measured
