"""`aa-fast`: AutoAttack-strength evaluation at a fraction of its cost.

Three stages, each on the points the previous ones left standing:

1. `apgd-ce`: robeval's APGD on cross-entropy, `iters` iterations, per-sample early exit;
2. `apgd-t(select=malt,targets=k)`: targeted APGD-DLR against the k classes with the smallest
   MALT score (the most promising targets), early exit;
3. Square (pyautoattack's, `queries` queries, AutoAttack's settings) on the points still
   standing, but only when the cheap gradient-masking checks of `robeval.diagnostics.masking`
   (determinism, logits, gradients, pyautoattack's checks, FGSM vs PGD-10), run on the first
   `CHECK_IMAGES` points of the batch, raise a flag. On a model whose gradients can be trusted
   the two gradient stages do what APGD-CE, APGD-T and FAB-T do in AutoAttack; where they
   cannot, the gradient-free attack decides.

It is one attack (one row of results, like `aa`) whose stages cascade inside each batch, so it
behaves the same under `--mode cascade` and `--mode independent`. `iterations` is the per-point
sum of APGD iterates and Square queries. Options: `iters` (100), `targets` (3), `queries` (5000).
`flagged` counts the batches on which the masking gate fired.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robeval.attacks.apgd import APGDAttack
from robeval.attacks.autoattack import PyAutoAttack
from robeval.attacks.base import ATTACKS, AttackOutcome, ThreatModel, evaluate_examples
from robeval.attacks.steps import NORMS
from robeval.errors import RobevalError
from robeval.spec import format_spec

CHECK_IMAGES = 200      # points of a batch the masking gate looks at
DEFAULTS = {"iters": 100, "targets": 3, "queries": 5000}


class FastAutoAttack:
    """`aa-fast` (see the module doc)."""

    def __init__(self, threat: ThreatModel, iters: int = 100, targets: int = 3, queries: int = 5000):
        self.threat, self.norm = threat, NORMS.resolve(threat.norm)
        self.stages = [APGDAttack("apgd-ce", threat, "ce", iters=iters),
                       APGDAttack("apgd-t", threat, "dlr-targeted", iters=iters, targets=targets,
                                  select="malt")]
        self.black_box = PyAutoAttack("square", threat, {"queries": queries})
        values = {"iters": iters, "targets": targets, "queries": queries}
        self.spec = format_spec("aa-fast", {k: v for k, v in values.items() if v != DEFAULTS[k]})
        self.flagged = 0
        self.last_flags: list[str] = []

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> AttackOutcome:
        """Attack a batch; returns per-sample outcomes (see `AttackOutcome` and the module doc)."""
        robust = torch.ones(len(images), dtype=torch.bool)
        adversarial = images.clone()
        iterations = torch.zeros(len(images), dtype=torch.long)
        for position, stage in enumerate(self.stages):
            self._apply(stage, model, images, labels, seed + position, robust, adversarial, iterations)
        self.last_flags = []
        if robust.any():
            self.last_flags = masking_flags(model, images[:CHECK_IMAGES], labels[:CHECK_IMAGES],
                                            self.threat, seed)
        if self.last_flags:
            self.flagged += 1
            self._apply(self.black_box, model, images, labels, seed + len(self.stages), robust,
                        adversarial, iterations, queries=True)
        outcome = evaluate_examples(model, adversarial, images, labels, self.norm, iterations)
        outcome.robust = robust
        return outcome

    def _apply(self, stage, model: nn.Module, images: Tensor, labels: Tensor, seed: int,
               robust: Tensor, adversarial: Tensor, iterations: Tensor, queries: bool = False) -> None:
        """Run one stage on the points still standing and merge its outcome (in place)."""
        standing = robust.nonzero().flatten()
        if len(standing) == 0:
            return
        on = standing.to(images.device)
        outcome = stage.run(model, images[on], labels[on], seed)
        broke = ~outcome.robust.cpu()
        robust[standing[broke]] = False
        adversarial[on[broke.to(images.device)]] = outcome.adversarial[broke.to(images.device)]
        if outcome.iterations is not None:
            iterations[standing] += outcome.iterations.cpu()
        elif queries:  # pyautoattack does not report Square's queries: count the budget
            iterations[standing] += self.black_box.values["queries"]


def masking_flags(model: nn.Module, images: Tensor, labels: Tensor, threat: ThreatModel,
                  seed: int) -> list[str]:
    """The flags that the cheap gradient-masking checks raise on these points (empty: none)."""
    # diagnostics sits above attacks (it runs them), so it is imported at call time
    from robeval.diagnostics.masking import run_checks

    results = run_checks(model, images, labels, eps=threat.eps, norm=threat.norm, seed=seed,
                         names="cheap")
    return [f"{result.name}: {result.flag}" for result in results if not result.passed]


def _build(threat: ThreatModel, options: dict) -> FastAutoAttack:
    """`aa-fast(iters=..., targets=..., queries=...)` with one-line errors for bad options."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise RobevalError(f"aa-fast has no option {', '.join(unknown)}; options: {', '.join(DEFAULTS)}")
    values = {}
    for key, value in options.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RobevalError(f"aa-fast: option {key}={value} must be a positive integer")
        values[key] = value
    if threat.norm not in NORMS or NORMS.resolve(threat.norm) not in ("linf", "l2"):
        raise RobevalError(f"aa-fast supports the norms linf, l2, not {threat.norm!r}")
    return FastAutoAttack(threat, **values)


ATTACKS.add("aa-fast", _build)
