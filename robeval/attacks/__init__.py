"""Attacks: norm step classes, losses, our PGD/FGSM and APGD, AutoAttack through pyautoattack,
`aa-fast`, suites, and the common corruptions (`robeval.attacks.corruptions`), a suite item
that is not an attack.

`apgd-ce`, `apgd-dlr`, `apgd-t` are robeval's APGD with per-sample early exit
(`robeval.attacks.apgd`); pyautoattack's APGD stays available as `pyautoattack-apgd-ce`,
`pyautoattack-apgd-dlr`, `pyautoattack-apgd-t`, and `aa`, `aa-plus`, `aa-rand` are
pyautoattack's versions unchanged.
"""

from robeval.attacks import apgd as _apgd  # noqa: F401  (registers apgd-ce, apgd-dlr, apgd-t)
from robeval.attacks import autoattack as _autoattack  # noqa: F401  (registers aa and its parts)
from robeval.attacks import corruptions as _corruptions  # noqa: F401  (registers the suite item corruptions)
from robeval.attacks import fast as _fast  # noqa: F401  (registers aa-fast)
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
