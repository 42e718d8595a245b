"""Reading a user's YAML file, with text that is not UTF-8 or not YAML as one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from robeval.errors import RobevalError


def read_yaml(path: str | Path, what: str) -> Any:
    """The document in the YAML file `path` (None when it is empty).

    Text that is not UTF-8, or not valid YAML, is a one-line RobevalError that names the file as
    `what` (e.g. "experiment", "config file"); what the document must hold is the caller's to check.
    """
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RobevalError(f"{what} {path} is not UTF-8 text ({err.reason} at byte "
                           f"{err.start}): save it as UTF-8") from err
    except yaml.YAMLError as err:
        raise RobevalError(f"{what} {path} is not valid YAML: {err}".splitlines()[0]) from err
