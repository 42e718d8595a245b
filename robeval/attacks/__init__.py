"""Attacks: norm step classes, losses, and the PGD/FGSM perturbation used by the trainer."""

from robeval.attacks.pgd import default_step_size, perturb
from robeval.attacks.steps import NORMS, L2Step, LinfStep, get_norm

__all__ = ["NORMS", "L2Step", "LinfStep", "default_step_size", "get_norm", "perturb"]
