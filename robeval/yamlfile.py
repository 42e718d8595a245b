"""Reading a user's YAML file, with text that is not UTF-8 or not YAML as one-line errors.

Aliases let a small file describe a huge value (each level of `&a [*b, *b, *b]` triples it), which
would hang whatever walks the value afterwards; a document whose aliases expand to more than
`MAX_EXPANDED_NODES` nodes is refused before it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from robeval.errors import RobevalError, first_line

MAX_EXPANDED_NODES = 100_000   # values in a document with every alias written out


def expanded_size(node: yaml.Node) -> int:
    """How many nodes the document has with every alias expanded (each node counted once per
    place it appears), computed without expanding: shared nodes are sized once."""
    sizes: dict[int, int] = {}

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key not in sizes:
            sizes[key] = 1  # a node that contains itself counts once, and stops the recursion
            if isinstance(current, yaml.SequenceNode):
                children = current.value
            elif isinstance(current, yaml.MappingNode):
                children = [item for pair in current.value for item in pair]
            else:
                children = []
            sizes[key] = min(1 + sum(size(child) for child in children), MAX_EXPANDED_NODES + 1)
        return sizes[key]

    return size(node)


def read_yaml(path: str | Path, what: str) -> Any:
    """The document in the YAML file `path` (None when it is empty).

    Text that is not UTF-8, or not valid YAML, is a one-line RobevalError that names the file as
    `what` (e.g. "experiment", "config file"); what the document must hold is the caller's to check.
    """
    path = Path(path)
    try:
        return parse_yaml(path.read_text(encoding="utf-8"), f"{what} {path}")
    except UnicodeDecodeError as err:
        raise RobevalError(f"{what} {path} is not UTF-8 text ({err.reason} at byte "
                           f"{err.start}): save it as UTF-8") from err
    except yaml.YAMLError as err:
        raise RobevalError(f"{what} {path} is not valid YAML: {first_line(err)}") from err


def parse_yaml(text: str, what: str) -> Any:
    """The YAML document in `text` (None when empty); one whose aliases expand past
    `MAX_EXPANDED_NODES` is a one-line RobevalError naming `what`. YAML errors propagate."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if expanded_size(node) > MAX_EXPANDED_NODES:
            raise RobevalError(f"{what} expands to more than {MAX_EXPANDED_NODES:,} values through "
                               "nested aliases (&name / *name): write the values out")
        return loader.construct_document(node)
    finally:
        loader.dispose()
