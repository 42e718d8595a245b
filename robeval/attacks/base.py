"""What every attack returns, the attack registry, and the suite grammar.

A suite is a comma-separated list of attack specs, each a name with optional options in
parentheses: `fgsm,pgd10,pgd200(step=1/255,restarts=2,loss=dlr),aa`. `pgdK` works for any K.
A suite may also hold items that are not attacks (`SUITE_ITEMS`: the common corruptions,
`corruptions(...)`); `parse_suite` returns them in their place among the attacks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from robeval.attacks.losses import margin
from robeval.attacks.steps import get_norm
from robeval.errors import RobevalError, UnknownNameError
from robeval.registry import Registry, canonical
from robeval.spec import parse_spec


@dataclass
class AttackOutcome:
    """Per-sample results of one attack on one batch (CPU tensors of length N)."""

    robust: Tensor                      # bool: the returned example is classified correctly
    margin: Tensor                      # logit[y] − max other logit at the returned example
    perturbation_norm: Tensor           # ‖x_adv − x‖ in the threat model's norm
    iterations: Tensor | None = None    # gradient steps (or queries) spent per sample, if known
    adversarial: Tensor | None = field(default=None, repr=False)  # the returned examples
    notes: dict = field(default_factory=dict)  # what the attack decided on the way (aa-fast's gate)


class Attack(Protocol):
    """An attack bound to its threat model: `run(model, images, labels, seed)`."""

    spec: str

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> AttackOutcome: ...


@dataclass(frozen=True)
class ThreatModel:
    """The perturbation set: radius ε in [0,1] pixel units and the norm."""

    eps: float
    norm: str = "linf"


AttackFactory = Callable[[ThreatModel, dict], Attack]  # factory(threat, options) -> Attack
ItemFactory = Callable[[dict], object]                 # factory(options) -> a suite item

PatternFactory = Callable[[re.Match, ThreatModel, dict], Attack]  # factory(match, threat, options)

ATTACKS: Registry[AttackFactory] = Registry("attack")
PATTERNS: list[tuple[re.Pattern, tuple[str, ...], PatternFactory]] = []  # families like pgdK
SUITE_ITEMS: Registry[ItemFactory] = Registry("suite item")  # not attacks: they have a `spec`, no `run`


def add_pattern(pattern: str, shown_as: tuple[str, ...], factory: PatternFactory) -> None:
    """Register a family of attack names matching `pattern`, listed as `shown_as` (e.g. `pgdK`)."""
    PATTERNS.append((re.compile(pattern), shown_as, factory))


def margins(logits: Tensor, labels: Tensor) -> Tensor:
    """logit of the true class minus the largest other logit (negative: misclassified)."""
    return -margin(logits, labels)


def split_suite(text: str) -> list[str]:
    """Split a suite at the commas that are not inside parentheses."""
    items, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise RobevalError(f"malformed suite {text!r}: unbalanced ')'")
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise RobevalError(f"malformed suite {text!r}: unbalanced '('")
    items.append("".join(current))
    if any(not item.strip() for item in items):
        raise RobevalError(f"malformed suite {text!r}: empty attack between commas")
    return [item.strip() for item in items]


def attack_names() -> list[str]:
    """Known attack names, with the registered patterns such as `pgdK` and `pgdK-smooth`."""
    return ATTACKS.names() + [name for _, shown_as, _ in PATTERNS for name in shown_as]


def build_attack(text: str, threat: ThreatModel) -> Attack:
    """One attack from its spec, e.g. `pgd200(step=1/255,restarts=2)` or `apgd-t`."""
    name, options = parse_spec(text)
    key = canonical(name)
    for pattern, _, factory in PATTERNS:
        match = pattern.match(key)
        if match:
            return factory(match, threat, options)
    if key not in ATTACKS:
        others = f"; other suite items: {', '.join(SUITE_ITEMS.names())}" if len(SUITE_ITEMS) else ""
        raise UnknownNameError(f"unknown attack {name!r}; known: {', '.join(attack_names())}{others}")
    return ATTACKS.get(key)(threat, options)


def build_item(text: str, threat: ThreatModel) -> Attack | object:
    """One suite item: an entry of `SUITE_ITEMS` (e.g. `corruptions(...)`), else an attack."""
    name, options = parse_spec(text)
    if name in SUITE_ITEMS:
        return SUITE_ITEMS.get(name)(options)
    return build_attack(text, threat)


def parse_suite(text: str, threat: ThreatModel) -> list[Attack | object]:
    """All items of a suite, in order: attacks and any `SUITE_ITEMS`; errors name the bad part."""
    attacks = [build_item(item, threat) for item in split_suite(text)]
    specs = [attack.spec for attack in attacks]
    if len(set(specs)) != len(specs):
        raise RobevalError(f"suite {text!r} names the same attack twice")
    return attacks


def perturbation_norms(adversarial: Tensor, images: Tensor, norm: str) -> Tensor:
    """Per-sample ‖x_adv − x‖ in the given norm."""
    return get_norm(norm).norm(adversarial - images)


@torch.no_grad()
def evaluate_examples(model: nn.Module, adversarial: Tensor, images: Tensor, labels: Tensor,
                      norm: str, iterations: Tensor | None = None) -> AttackOutcome:
    """The outcome of given adversarial examples: robust if still classified correctly."""
    logits = model(adversarial)
    margin = margins(logits, labels)
    return AttackOutcome(robust=(logits.argmax(1) == labels).cpu(), margin=margin.float().cpu(),
                         perturbation_norm=perturbation_norms(adversarial, images, norm).cpu(),
                         iterations=iterations, adversarial=adversarial)
