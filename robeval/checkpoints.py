"""Checkpoint and result files: atomic writes, and loads that treat every file as untrusted."""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from robeval.errors import RobevalError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(handle, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_output(path: Path) -> Iterator[io.BytesIO]:
    """A buffer to write into; on leaving without error it replaces `path` atomically.

    For writers that want a file object (matplotlib's savefig, PdfPages): nothing touches the
    disk until the content is complete, so an error or a kill never leaves a partial file.
    """
    buffer = io.BytesIO()
    yield buffer
    atomic_write_bytes(path, buffer.getvalue())


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries that `atomic_write_bytes` leaves only when killed outright."""
    folder = Path(folder)
    stale = [path for path in folder.glob(".*.tmp") if path.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """`torch.save` through an atomic write; equal contents give equal bytes (`interned`)."""
    buffer = io.BytesIO()
    torch.save(interned(obj), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def interned(value: Any) -> Any:
    """`value` with every string in its dicts, lists and tuples interned.

    Pickle writes a string once and refers back to it when the same object appears again, so
    the bytes depend on which equal strings are one object: a training state rebuilt from a
    loaded checkpoint (a resumed run) would otherwise hash differently from the uninterrupted
    run's although every value is equal.
    """
    if isinstance(value, str):
        return sys.intern(value)
    if type(value) in (dict, OrderedDict):   # subclasses with other constructors stay as they are
        copy = type(value)((interned(key), interned(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):   # a state_dict's module versions
            copy._metadata = interned(value._metadata)
        return copy
    if type(value) in (list, tuple):
        return type(value)(interned(item) for item in value)
    return value


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; unreadable files give a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise RobevalError(f"checkpoint {path} does not exist: check the path or train first")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RobevalError(
            f"checkpoint {path} is corrupt, truncated or not a weights-only torch file "
            f"({type(err).__name__}): re-create it or point to another file"
        ) from err


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON lines, atomically (the whole file is small)."""
    atomic_write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a missing file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
