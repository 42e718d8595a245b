"""`aa-fast`: AutoAttack-strength evaluation at a fraction of its cost.

Three stages, each on the points the previous ones left standing:

1. `apgd-ce`: robeval's APGD on cross-entropy, `iters` iterations, per-sample early exit;
2. `apgd-t(select=malt,targets=k)`: targeted APGD-DLR against the k classes with the smallest
   MALT score (the most promising targets), early exit;
3. Square (pyautoattack's, `queries` queries, AutoAttack's settings) on the points still
   standing, but only when the masking gate fires. The gate is handed to the attack by the
   evaluation engine (`robeval.diagnostics.masking.masking_gate`, which sits above the attacks):
   the cheap gradient-masking checks run on the points still standing and a sample of the
   others (`gate_sample`), and the stages' own counts decide `loss_dependence` (the DLR stage
   broke markedly more than cross-entropy could). On a model whose gradients can be trusted the two
   gradient stages do what APGD-CE, APGD-T and FAB-T do in AutoAttack; where they cannot, the
   gradient-free attack decides.

Targets: MALT chooses among the classes the model was seen to predict in the batch (clean or
adversarial), so classes that never win cannot use up the target budget. Each point keeps the
lowest-margin example any stage found (the breaking one for a broken point); the verdict is a
fresh forward pass on it, never a stage's bookkeeping.

It is one attack (one row of results, like `aa`) whose stages cascade inside each batch, so it
behaves the same under `--mode cascade` and `--mode independent`. `iterations` is the per-point
sum of APGD iterates and Square queries. Options: `iters` (100), `targets` (3), `queries` (5000).
The outcome's notes record the gate of each batch (points judged, fired, flags).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from robeval.attacks.apgd import APGDAttack
from robeval.attacks.autoattack import PyAutoAttack
from robeval.attacks.base import ATTACKS, AttackOutcome, ThreatModel, evaluate_examples
from robeval.attacks.steps import NORMS
from robeval.errors import RobevalError
from robeval.spec import format_spec, positive_option

CHECK_IMAGES = 200      # at most this many points of a batch go to the masking gate
GATE_SAMPLE = 32        # points broken by the gradient stages that the gate looks at as well
DEFAULTS = {"iters": 100, "targets": 3, "queries": 5000}

# gate(model, images, labels, threat, seed, (points the CE stage broke, points the DLR stage broke))
# -> the flags raised (empty: the gate stays shut)
Gate = Callable[[nn.Module, Tensor, Tensor, ThreatModel, int, tuple[int, int]], list[str]]


class FastAutoAttack:
    """`aa-fast` (see the module doc)."""

    def __init__(self, threat: ThreatModel, iters: int = 100, targets: int = 3, queries: int = 5000,
                 gate: Gate | None = None):
        self.threat, self.norm = threat, NORMS.resolve(threat.norm)
        self.gate = gate  # the evaluation engine hands it `robeval.diagnostics.masking.masking_gate`
        self.stages = [APGDAttack("apgd-ce", threat, "ce", iters=iters),
                       APGDAttack("apgd-t", threat, "dlr-targeted", iters=iters, targets=targets,
                                  select="malt")]
        self.black_box = PyAutoAttack("square", threat, {"queries": queries})
        values = {"iters": iters, "targets": targets, "queries": queries}
        self.spec = format_spec("aa-fast", {k: v for k, v in values.items() if v != DEFAULTS[k]})

    def run(self, model: nn.Module, images: Tensor, labels: Tensor, seed: int) -> AttackOutcome:
        """Attack a batch; returns per-sample outcomes (see `AttackOutcome` and the module doc).

        The notes hold the gate: the points it looked at, whether it fired and the flags that
        opened it.
        """
        state = _Standing(images)
        live = None
        broke = []
        for position, stage in enumerate(self.stages):
            outcome = state.apply(stage, model, images, labels, seed + position, live_classes=live)
            broke.append(outcome)
            live = outcome.notes["predicted"] if live is None else live | outcome.notes["predicted"]
        if self.gate is None:
            raise RobevalError("aa-fast has no masking gate: run it through robeval's evaluation "
                               "(robeval attack, evaluate_model, attack_tensors) or set its `gate` to "
                               "robeval.diagnostics.masking.masking_gate")
        gate_points = gate_sample(state.robust, seed).to(images.device)
        counts = tuple(0 if outcome is None else outcome.notes["broke"] for outcome in broke)
        flags = self.gate(model, images[gate_points], labels[gate_points], self.threat, seed, counts)
        if flags:
            state.apply(self.black_box, model, images, labels, seed + len(self.stages), queries=True)
        outcome = evaluate_examples(model, state.worst, images, labels, self.norm, state.iterations)
        outcome.notes = {"gate": {"points": len(gate_points), "fired": bool(flags), "flags": flags}}
        return outcome


class _Standing:
    """Which points of a batch still stand, the worst example found for each, and the cost."""

    def __init__(self, images: Tensor):
        self.robust = torch.ones(len(images), dtype=torch.bool)
        self.worst = images.clone()
        self.worst_margin = torch.full((len(images),), float("inf"))
        self.iterations = torch.zeros(len(images), dtype=torch.long)

    def apply(self, stage, model: nn.Module, images: Tensor, labels: Tensor, seed: int,
              queries: bool = False, **options) -> AttackOutcome | None:
        """Run one stage on the points still standing; keep each point's lowest-margin example."""
        standing = self.robust.nonzero().flatten()
        if len(standing) == 0:
            return None
        on = standing.to(images.device)
        outcome = stage.run(model, images[on], labels[on], seed, **options)
        better = outcome.margin.cpu() < self.worst_margin[standing]
        self.worst[on[better.to(on.device)]] = outcome.adversarial[better.to(on.device)]
        self.worst_margin[standing[better]] = outcome.margin.cpu()[better]
        self.robust[standing] = outcome.robust.cpu()
        if outcome.iterations is not None:
            self.iterations[standing] += outcome.iterations.cpu()
        elif queries:  # pyautoattack does not report Square's queries: count the budget
            self.iterations[standing] += stage.values["queries"]
        outcome.notes = {**outcome.notes, "broke": int((~outcome.robust).sum()),
                         "attacked": len(standing)}
        return outcome


def gate_sample(robust: Tensor, seed: int) -> Tensor:
    """The points the masking gate judges: every point still standing (up to `CHECK_IMAGES`) and
    a seeded sample of `GATE_SAMPLE` (or a quarter as many as stand, if more) of the others."""
    standing, others = robust.nonzero().flatten(), (~robust).nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    standing = standing[torch.randperm(len(standing), generator=generator)][:CHECK_IMAGES]
    wanted = min(len(others), max(GATE_SAMPLE, len(standing) // 4), CHECK_IMAGES - len(standing))
    sample = others[torch.randperm(len(others), generator=generator)[:max(wanted, 0)]]
    return torch.cat([standing, sample]).sort().values


def _build(threat: ThreatModel, options: dict) -> FastAutoAttack:
    """`aa-fast(iters=..., targets=..., queries=...)` with one-line errors for bad options."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise RobevalError(f"aa-fast has no option {', '.join(unknown)}; options: {', '.join(DEFAULTS)}")
    values = {key: positive_option("aa-fast", key, value) for key, value in options.items()}
    if threat.norm not in NORMS or NORMS.resolve(threat.norm) not in ("linf", "l2"):
        raise RobevalError(f"aa-fast supports the norms linf, l2, not {threat.norm!r}")
    return FastAutoAttack(threat, **values)


ATTACKS.add("aa-fast", _build)
