"""Typed settings, validated at the boundary with pydantic: one message per bad field.

A settings dataclass declares each field's type and range with `Annotated[..., Field(...)]`
(see the aliases below); `validated(instance)` checks the instance against them, so the CLI,
YAML files and the Python API, which all build the same dataclasses, are held to one schema.
pydantic does the type and range work (strict where a number must be a whole number, ASCII
digits only, finite floats); robeval turns the first error into a one-line `RobevalError` that
names the field as the user wrote it (`--batch-size`) and what it must be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any

from pydantic import Field, Strict, TypeAdapter, ValidationError

from robeval.errors import RobevalError, short_repr

MAX_SEED = 2**63 - 1           # what SQLite stores as an integer
MAX_TRAIN_SEED = 2**32 - 1     # what numpy's and Python's generators take as a training seed
MAX_IMAGES = 2**31 - 1         # test images a run may ask for
MAX_BATCH = 2**20              # images in one batch
MAX_STEPS = 10**6              # attack steps, as for the suite's counts
MAX_EPOCHS = 10**6

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
ImageCount = Annotated[int, Field(ge=1, le=MAX_IMAGES)]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]


def whole(low: int, high: int) -> Any:
    """A field type: a whole number in [low, high] (not a bool, a float or a string)."""
    return Annotated[int, Strict(), Field(ge=low, le=high)]


def finite(**bounds: float) -> Any:
    """A field type: a finite number within `bounds` (pydantic's gt, ge, lt, le)."""
    return Annotated[float, Field(allow_inf_nan=False, **bounds)]


@cache
def _adapter(kind: type) -> TypeAdapter:
    return TypeAdapter(kind)


def option_name(field: str) -> str:
    """How the command line spells a settings field: `batch_size` → `--batch-size`."""
    return "--" + field.replace("_", "-")


def validated(instance: Any, name: Callable[[str], str] = option_name) -> Any:
    """`instance` (a settings dataclass) with every field checked and converted to its declared
    type, or a one-line RobevalError about the first bad field (called by `name(field)`).

    Nested settings dataclasses are not checked again: validate each section on its own."""
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}
    try:
        return _adapter(type(instance)).validate_python(values)
    except ValidationError as err:
        raise RobevalError(first_problem(err, name)) from None


def first_problem(err: ValidationError, name: Callable[[str], str] = option_name) -> str:
    """The first bad field of a pydantic validation as one line: its option name, the value
    given and what it must be (for a field of several types, what each would need)."""
    problems = err.errors(include_url=False)
    field = problems[0]["loc"][0]
    messages = [p["msg"] for p in problems if p["loc"][0] == field]
    wanted = " or ".join(dict.fromkeys(message[0].lower() + message[1:] for message in messages))
    shown = short_repr(problems[0].get("input"))
    return f"{name(str(field))} must be valid, not {shown}: {wanted}"
