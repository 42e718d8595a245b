"""The suite item `corruptions(types=...,severities=...)`: common corruptions beside the attacks.

Lists inside the item are joined with `+` (commas separate options): `types` takes corruption
names and the families noise, blur, weather and digital; `severities` takes whole numbers 1..5
and ranges `a-b`. `corruptions` alone is all 15 types at all 5 severities (RobustBench's
corruptions threat model); e.g. `corruptions(types=noise+fog,severities=1-3)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from robeval.attacks.base import SUITE_ITEMS
from robeval.attacks.corruptions.base import CORRUPTIONS, GROUPS, SEVERITIES, corruption_names, get_corruption
from robeval.errors import RobevalError, short_repr
from robeval.spec import format_spec

NAME = "corruptions"
EXAMPLE = "corruptions(types=fog+snow,severities=1-3)"


@dataclass(frozen=True)
class CorruptionSuite:
    """Which corruption types at which severities a run evaluates; not an adversarial attack."""

    types: tuple[str, ...]
    severities: tuple[int, ...]

    @property
    def spec(self) -> str:
        """The canonical spec: types in CIFAR-10-C's order, severities ascending, defaults left out."""
        options = {}
        if self.types != tuple(corruption_names()):
            options["types"] = "+".join(self.types)
        if self.severities != SEVERITIES:
            options["severities"] = "+".join(map(str, self.severities))
        return format_spec(NAME, options)

    @property
    def conditions(self) -> list[tuple[str, int]]:
        """(type, severity) pairs in evaluation order: by type, then by severity."""
        return [(name, severity) for name in self.types for severity in self.severities]


def build_corruptions(options: dict) -> CorruptionSuite:
    """The suite item from its options (`types`, `severities`); one-line errors naming the fix."""
    unknown = sorted(set(options) - {"types", "severities"})
    if unknown:
        raise RobevalError(f"{NAME}: unknown option {short_repr(unknown[0])}; known: types, severities "
                           f"(e.g. {EXAMPLE})")
    types = parse_types(options["types"]) if "types" in options else tuple(corruption_names())
    severities = parse_severities(options["severities"]) if "severities" in options else SEVERITIES
    return CorruptionSuite(types, severities)


def parse_types(value: object) -> tuple[str, ...]:
    """Corruption names and families joined by `+`, in CIFAR-10-C's order; each type once."""
    chosen: list[str] = []
    for part in _parts(value, "types"):
        group = part.lower()
        names = ([name for name in corruption_names() if CORRUPTIONS.get(name).group == group]
                 if group in GROUPS else [_known(part)])
        for name in names:
            if name in chosen:
                raise RobevalError(f"{NAME}: {name} is listed twice in types={_shown(value)}; list each type "
                                   "once")
            chosen.append(name)
    return tuple(name for name in corruption_names() if name in chosen)


def _known(part: str) -> str:
    try:
        return get_corruption(part).name
    except RobevalError as err:
        raise RobevalError(f"{NAME}: {err}") from None


def parse_severities(value: object) -> tuple[int, ...]:
    """Severities 1..5 and ranges a-b joined by `+`, ascending; each once."""
    chosen: list[int] = []
    for part in _parts(value, "severities"):
        low, dash, high = part.partition("-")
        first = _severity(low, value)
        last = _severity(high, value) if dash else first
        if last < first:
            raise RobevalError(f"{NAME}: range {part} in severities={_shown(value)} runs backwards; write "
                               f"{last}-{first}")
        for severity in range(first, last + 1):
            if severity in chosen:
                raise RobevalError(f"{NAME}: severity {severity} is listed twice in "
                                   f"severities={_shown(value)}; list each once")
            chosen.append(severity)
    return tuple(sorted(chosen))


def _severity(text: str, value: object) -> int:
    text = text.strip()
    if text not in {str(severity) for severity in SEVERITIES}:
        raise RobevalError(f"{NAME}: severity {_shown(text) or '(empty)'} in severities={_shown(value)} is "
                           "not a whole number in 1..5; write e.g. severities=1-5 or severities=1+3+5")
    return int(text)


def _parts(value: object, option: str) -> list[str]:
    text = str(value).strip()
    if isinstance(value, bool) or not text:
        raise RobevalError(f"{NAME}: {option}={_shown(value)} names nothing; e.g. {EXAMPLE}")
    if isinstance(value, float):
        raise RobevalError(f"{NAME}: {option}={_shown(value)} is not a list of names or whole numbers; "
                           f"e.g. {EXAMPLE}")
    parts = [part.strip() for part in text.split("+")]
    if any(not part for part in parts):
        raise RobevalError(f"{NAME}: {option}={_shown(value)} has an empty entry between '+' signs")
    return parts


SUITE_ITEMS.add(NAME, build_corruptions)


def _shown(value: object) -> str:
    """A user's value for a message: as typed, on one line, cut to 40 characters."""
    text = " ".join(str(value).split()) if not isinstance(value, int) or value.bit_length() < 300 \
        else short_repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def split_suite_items(items: list) -> tuple[list, CorruptionSuite | None]:
    """The attacks of a parsed suite, in order, and its corruptions item (None if it has none)."""
    corruptions = [item for item in items if isinstance(item, CorruptionSuite)]
    if len(corruptions) > 1:
        raise RobevalError(f"the suite names {NAME} {len(corruptions)} times; merge them into one "
                           f"{NAME}(...) (e.g. {EXAMPLE})")
    attacks = [item for item in items if not isinstance(item, CorruptionSuite)]
    return attacks, corruptions[0] if corruptions else None
