"""The plain values the store takes and gives back, and helpers on values (JSON, intervals)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from robeval.errors import RobevalError


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
    corruptions: list[tuple[str, int]] = field(default_factory=list)  # (type, severity) conditions


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


@dataclass
class CorruptionRow:
    """What the model predicted for sample `index` under the corruption condition at `position`."""

    index: int
    position: int
    prediction: int
    margin: float | None


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


def stored_json(text: object, path: object, what: str) -> Any:
    """A JSON value read back from the store at `path`; text that is not JSON (an altered store)
    is a one-line error naming `what` (e.g. "the config of run 3")."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as err:
        raise RobevalError(f"results database {path}: {what} is not JSON ({type(err).__name__}): the "
                           "store was altered outside robeval; restore it or pass --db with another "
                           "path") from err
