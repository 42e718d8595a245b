"""Parse user-given numbers and `name(key=value, ...)` specs, shared by activations and attacks."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from robeval.errors import RobevalError, short_repr

_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\((.*)\))?\s*$")


def parse_number(text: str | float | int) -> float | int:
    """`8/255` → 0.0313..., `1e-3` → 0.001, `10` → 10 (ints stay ints)."""
    if isinstance(text, (int, float)):
        return text
    try:
        text = str(text).strip()
    except ValueError as err:   # e.g. a list holding a 4300+ digit int, which str() refuses
        raise RobevalError(f"{short_repr(text)} is not a number (write e.g. 0.5, 1e-3 or 8/255)") from err
    try:
        if "/" in text:
            return float(Fraction(text.replace(" ", "")))
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)   # exact; past 4300 digits int() refuses (ValueError)
        return float(text)
    except (ValueError, ZeroDivisionError, OverflowError) as err:
        shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
        raise RobevalError(f"{shown} is not a number that fits (write e.g. 0.5, 1e-3 or 8/255)"
                           if isinstance(err, OverflowError) or len(text) > 4000 else
                           f"{shown} is not a number (write e.g. 0.5, 1e-3 or 8/255)") from err


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
    number = parse_number(text)
    try:
        value = float(number)
    except OverflowError:   # an int past float's range
        value = math.inf if number > 0 else -math.inf
    whole = isinstance(text, float) and text.is_integer() and abs(text) < 1e16
    text = _short(int(text) if whole else text)   # 8.0 from a typed setting reads as the 8 given
    if not math.isfinite(value):
        raise RobevalError(f"eps={text} is not a finite number; use e.g. 8/255")
    if value > 1:
        raise RobevalError(
            f"eps={text} is above 1: eps is in [0,1] pixel units; did you mean {text}/255?"
        )
    if value < 0:
        raise RobevalError(f"eps={text} is negative; use e.g. 8/255")
    return value


# Upper bounds of attack counts: a typo such as pgd99999999999 or queries=1e20 is an error at once,
# not a run that never ends (or an allocation that fails) hours later.
MAX_ITERATIONS = 10**6       # steps, iterations, queries
MAX_REPEATS = 10**4          # restarts, target classes, EOT passes
OPTION_MAXIMA = {"restarts": MAX_REPEATS, "targets": MAX_REPEATS, "eot": MAX_REPEATS}


def positive_option(name: str, key: str, value: object, hint: str | None = None,
                    maximum: int | None = None) -> int:
    """An attack option's value as a positive integer up to `maximum`, or an error naming the option.

    With a `hint` the error ends in it, in brackets: "pgd10: restarts=0 must be a positive
    integer (write e.g. restarts=2)". `maximum` defaults to `MAX_REPEATS` for restarts, targets
    and eot, else `MAX_ITERATIONS`.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        if hint is None:
            raise RobevalError(f"{name}: option {key}={_short(value)} must be a positive integer")
        raise RobevalError(f"{name}: {key}={_short(value)} must be a positive integer ({hint})")
    limit = OPTION_MAXIMA.get(key, MAX_ITERATIONS) if maximum is None else maximum
    if value > limit:
        raise RobevalError(f"{name}: {key}={_short(value)} is too large; {key} must be at most {limit:,}")
    return value


def _short(value: object) -> str:
    """A value for a message as str() shows it, cut to 40 characters; a huge int by its size."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 332:
        return short_repr(value)   # past ~100 digits (str() refuses 4300+)
    text = " ".join(str(value).splitlines())
    return text if len(text) <= 40 else text[:37] + "..."
