"""Parse user-given numbers and `name(key=value, ...)` specs, shared by activations and attacks."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from robeval.errors import RobevalError

_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\((.*)\))?\s*$")


def parse_number(text: str | float | int) -> float | int:
    """`8/255` → 0.0313..., `1e-3` → 0.001, `10` → 10 (ints stay ints)."""
    if isinstance(text, (int, float)):
        return text
    text = str(text).strip()
    try:
        if "/" in text:
            return float(Fraction(text.replace(" ", "")))
        value = float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise RobevalError(f"{text!r} is not a number (write e.g. 0.5, 1e-3 or 8/255)") from err
    return int(value) if re.fullmatch(r"[+-]?\d+", text) else value


def parse_value(text: str) -> float | int | bool | str:
    """A spec value: number, fraction, true/false, or a bare string."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    try:
        return parse_number(text)
    except RobevalError:
        return text.strip()


def parse_spec(text: str) -> tuple[str, dict[str, float | int | bool | str]]:
    """`elu(alpha=0.5)` → ("elu", {"alpha": 0.5}); a bare name has no options."""
    match = _SPEC.match(text)
    if not match:
        raise RobevalError(f"malformed spec {text!r}; expected NAME or NAME(key=value, ...)")
    name, body = match.group(1), match.group(2)
    options: dict[str, float | int | bool | str] = {}
    if body and body.strip():
        for item in body.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise RobevalError(
                    f"malformed option {item.strip()!r} in {text!r}; expected key=value"
                )
            if key.strip() in options:
                raise RobevalError(f"option {key.strip()!r} is given twice in {text!r}; keep one")
            options[key.strip()] = parse_value(value)
    return name, options


def format_spec(name: str, options: dict) -> str:
    """Inverse of `parse_spec`: ("elu", {"alpha": 0.5}) → "elu(alpha=0.5)"."""
    if not options:
        return name
    body = ",".join(f"{key}={value}" for key, value in options.items())
    return f"{name}({body})"


def parse_eps(text: str | float) -> float:
    """ε in [0,1] pixel units; a value above 1 is an error with a hint, never silently rescaled."""
    value = float(parse_number(text))
    if not math.isfinite(value):
        raise RobevalError(f"eps={text} is not a finite number; use e.g. 8/255")
    if value > 1:
        raise RobevalError(
            f"eps={text} is above 1: eps is in [0,1] pixel units; did you mean {text}/255?"
        )
    if value < 0:
        raise RobevalError(f"eps={text} is negative; use e.g. 8/255")
    return value


def positive_option(name: str, key: str, value: object, hint: str | None = None) -> int:
    """An attack option's value as a positive integer, or an error naming the option.

    With a `hint` the error ends in it, in brackets: "pgd10: restarts=0 must be a positive
    integer (write e.g. restarts=2)".
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        if hint is None:
            raise RobevalError(f"{name}: option {key}={value} must be a positive integer")
        raise RobevalError(f"{name}: {key}={value} must be a positive integer ({hint})")
    return value
