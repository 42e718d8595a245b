"""Diagnostics of robust training: how well the first-order (FGSM/IGR) approximation of the
inner maximisation holds, measured per sample on the input loss landscape."""

from robeval.diagnostics.gradients import (
    QUANTITIES,
    batch_diagnostics,
    fgsm_delta,
    gradient_alignment,
    gradient_diagnostics,
    gradient_lipschitz,
    input_gradient_norms,
    linearisation_error,
    loss_gap,
    pgd_delta,
    random_delta,
    summarise,
    summary_dict,
)

__all__ = ["QUANTITIES", "batch_diagnostics", "fgsm_delta", "gradient_alignment",
           "gradient_diagnostics", "gradient_lipschitz", "input_gradient_norms",
           "linearisation_error", "loss_gap", "pgd_delta", "random_delta", "summarise",
           "summary_dict"]
