"""Attacks: norm step classes, losses, our PGD/FGSM, AutoAttack through pyautoattack, suites."""

from robeval.attacks import autoattack as _autoattack  # noqa: F401  (registers aa and its parts)
from robeval.attacks.base import (
           ATTACKS,
           Attack,
           AttackOutcome,
           ThreatModel,
           attack_names,
           build_attack,
           parse_suite,
)
from robeval.attacks.pgd import PGDAttack, default_step_size, eval_step_size, perturb
from robeval.attacks.steps import NORMS, L2Step, LinfStep, get_norm

__all__ = ["ATTACKS", "NORMS", "Attack", "AttackOutcome", "L2Step", "LinfStep", "PGDAttack",
           "ThreatModel", "attack_names", "build_attack", "default_step_size",
           "eval_step_size", "get_norm", "parse_suite", "perturb"]
