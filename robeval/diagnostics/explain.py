"""Plain-language output of the diagnostics: what each gradient quantity is called in the
papers, with its unit, and one short evidence summary per gradient-masking check.

The codes of `gradients.QUANTITIES` stay the keys of the results store, the history files and
`--json`; `QUANTITY_LABELS` is the one place that names them for people (the command line, the
Python API's printed summary and the report). `EVIDENCE_SUMMARIES` maps each check of
`masking.CHECKS` to a function that turns its `evidence` dict into a few words; the full
evidence stays in the store and in `--json`. `gradient_lines` and `check_lines` lay both out
within a given width (100 columns by default).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd

WIDTH = 100                 # columns of the printed summary
CHECK_INDENT = 24           # the column where a check's evidence and explanation start


@dataclass(frozen=True)
class Quantity:
    """How a gradient-diagnostics quantity is written for people."""

    label: str    # as the papers name it; "{steps}" stands for PGD's number of steps K
    unit: str     # L in nats; input gradients per unit of [0,1] pixel intensity

    def text(self, pgd_steps: int = 10) -> str:
        """The label with PGD's K filled in."""
        return self.label.format(steps=pgd_steps)


QUANTITY_LABELS: dict[str, Quantity] = {
    "R_fgsm": Quantity("R(x,δ), δ = FGSM step", "nats"),
    "R_random": Quantity("R(x,δ), δ = random point of the ε-ball", "nats"),
    "R_pgd": Quantity("R(x,δ), δ = PGD-{steps}", "nats"),
    "grad_l1": Quantity("‖∇ₓL‖₁", "nats/unit"),
    "grad_l2": Quantity("‖∇ₓL‖₂", "nats/unit"),
    "grad_alignment": Quantity("GradAlign cosine, η random in the ε-ball", "cosine"),
    "grad_lipschitz": Quantity("local gradient-Lipschitz, δ = PGD-{steps}", "nats/unit²"),
    "loss_gap": Quantity("PGD−FGSM loss gap, PGD-{steps}", "nats"),
}

R_READING = ("larger R: the loss is less linear in the ε-ball, the regime where single-step "
             "(FGSM/PGD-1) training fails")
GRADIENT_UNITS = "input gradients are per unit of [0,1] pixel intensity"
READING = ("R(x,δ) = L(x+δ) − L(x) − ⟨∇ₓL(x), δ⟩ is the linearisation error of the "
           f"cross-entropy L (the smoothness study): {R_READING}. GradAlign cosine is "
           f"cos(∇ₓL(x), ∇ₓL(x+η)); {GRADIENT_UNITS}.")

COLUMNS_NOTE = "5%, 95%: percentiles over the images; <0: share of the images below zero."
GRADIENT_COLUMNS = (("mean", "mean"), ("median", "median"), ("q05", "5%"), ("q95", "95%"))


def quantity_label(code: str, pgd_steps: int = 10) -> str:
    """The people's name of a quantity code (the code itself when it has none)."""
    quantity = QUANTITY_LABELS.get(code)
    return code if quantity is None else quantity.text(pgd_steps)


def quantity_unit(code: str) -> str:
    """The unit of a quantity code ('' when unknown)."""
    quantity = QUANTITY_LABELS.get(code)
    return "" if quantity is None else quantity.unit


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else str(value)


def gradient_lines(gradients: pd.DataFrame, pgd_steps: int = 10, width: int = WIDTH) -> list[str]:
    """The gradient-diagnostics summary (a `gradients.summarise` frame) as labelled rows: mean,
    median, 5th and 95th percentile, share below zero; then how to read it, within `width`."""
    order = [code for code in QUANTITY_LABELS if code in gradients.index]
    gradients = gradients.loc[order + [code for code in gradients.index if code not in order]]
    labels = {code: quantity_label(code, pgd_steps) for code in gradients.index}
    label_width = max([len("quantity"), *map(len, labels.values())])
    unit_width = max([len("unit"), *(len(quantity_unit(code)) for code in gradients.index)])
    header = f"{'quantity':<{label_width}}  {'unit':<{unit_width}}"
    header += "".join(f"{title:>10}" for _, title in GRADIENT_COLUMNS) + f"{'<0':>6}"
    lines = [header]
    notes = []
    for code, row in gradients.iterrows():
        line = f"{labels[code]:<{label_width}}  {quantity_unit(code):<{unit_width}}"
        line += "".join(f"{_number(row.get(column)):>10}" for column, _ in GRADIENT_COLUMNS)
        negative = row.get("frac_negative")
        line += f"{'-' if negative is None or math.isnan(negative) else f'{100 * negative:.0f}%':>6}"
        lines.append(line)
        if int(row.get("n_nonfinite", 0) or 0):
            notes.append(f"{labels[code]}: {int(row['n_nonfinite'])} non-finite values left out")
    for text in [*notes, COLUMNS_NOTE, READING]:
        lines += textwrap.wrap(text, width)
    return lines


# --- evidence summaries, one per check -------------------------------------------------------

def _pct(value) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else str(value)


def _chance(value) -> str:
    return f"{100 * value:.3g}%" if isinstance(value, (int, float)) else str(value)


def _flag_from(flag_from: int, out_of: int) -> str:
    return "too few points to flag" if flag_from > out_of else f"flag from {flag_from}"


def _determinism(e: dict) -> str:
    text = (f"relative logit change {_number(e['repeat_difference'], 2)} on a repeat, "
            f"{_number(e['split_difference'], 2)} in half batches")
    changed = e["changed_predictions"]
    return text + (f"; {changed} changed class" if changed else "")


def _logits(e: dict) -> str:
    text = f"outputs look like {e['outputs']}, from {_number(e['min_output'])} to {_number(e['max_output'])}"
    if e["outputs"] == "probabilities":
        text += f"; rows sum to 1 within {_number(e['max_row_sum_error'])}"
    elif e["outputs"] == "log-probabilities":
        text += f"; exponentials sum to 1 within {_number(e['max_exp_sum_error'])}"
    return text


def _gradients(e: dict) -> str:
    count = e["zero_gradients"] + e["nonfinite_gradients"]
    kind = "zero gradient" if not e["nonfinite_gradients"] else "zero or non-finite gradient"
    return (f"{count} of {e['correct']} correct points with {kind} "
            f"({_flag_from(e['flag_from'], e['correct'])})")


def _gradient_quality(e: dict) -> str:
    if not e["usable"]:
        return f"none of {e['n']} points has a non-zero finite gradient to judge"
    return (f"{e['noise_like']} of {e['usable']} noisy gradients "
            f"({_flag_from(e['flag_from'], e['usable'])}); median cosine "
            f"{_number(e['median_alignment'], 2)}, FGSM gain {_number(e['median_fgsm_gain'], 2)}")


def _loss_dependence(e: dict) -> str:
    total = e["cross_entropy_broke"] + e["margin_only_broke"]
    return (f"PGD-10 on cross-entropy broke {e['cross_entropy_broke']}, then DLR "
            f"{e['margin_only_broke']} more ({_flag_from(e['flag_from'], total)})")


def _autoattack_checks(e: dict) -> str:
    warnings = e["warnings"]
    if not warnings:
        return f"no warnings from pyautoattack's {len(e['checks'])} checks"
    first = textwrap.shorten(" ".join(str(warnings[0]).split()), 50, placeholder="…")
    return f"{len(warnings)} warning{'s' * (len(warnings) > 1)}: {first}"


def _attack_pair(e: dict) -> str:
    weaker, stronger = e["weaker"], e["stronger"]
    return (f"robust: {weaker} {_pct(e['weaker_accuracy'])}, {stronger} "
            f"{_pct(e['stronger_accuracy'])}; only {weaker} broke {e['only_weaker_broke']}, "
            f"only {stronger} {e['only_stronger_broke']}")


def _more_iterations(e: dict) -> str:
    runs = ", ".join(f"{spec} {_pct(accuracy)}" for spec, accuracy in e["accuracy"].items())
    return f"robust: {runs} (must not rise)"


def _larger_eps(e: dict) -> str:
    curve = ", ".join(_pct(accuracy) for accuracy in e["accuracy"])
    return (f"robust {curve} at ε×1,2,4 (chance {_chance(e['chance'])}); "
            f"{100 * e['retained_at_4eps']:.0f}% kept from ε to 4ε")


def _unbounded(e: dict) -> str:
    accuracy = e["accuracy"]
    return (f"radius {_number(e['radius'])}: robust {_pct(accuracy['random_start'])} from random "
            f"start, {_pct(accuracy['clean_start'])} from clean (chance {_chance(e['chance'])})")


def _black_box(e: dict) -> str:
    return (f"{e['attack']} broke {e['square_only_broke']} points PGD-20 left; robust "
            f"{_pct(e['pgd20_accuracy'])} → {_pct(e['pgd20_then_square_accuracy'])}")


EVIDENCE_SUMMARIES: dict[str, Callable[[dict], str]] = {
    "determinism": _determinism,
    "logits": _logits,
    "gradients": _gradients,
    "gradient_quality": _gradient_quality,
    "loss_dependence": _loss_dependence,
    "autoattack_checks": _autoattack_checks,
    "fgsm_vs_pgd": _attack_pair,
    "more_iterations": _more_iterations,
    "larger_eps": _larger_eps,
    "unbounded": _unbounded,
    "black_box": _black_box,
}


def evidence_summary(name: str, evidence: dict) -> str:
    """A few words on the evidence of the check `name`; for a check without a summary, or
    evidence it cannot read (an older store), its plain entries shortened to one line."""
    summarise = EVIDENCE_SUMMARIES.get(name)
    if summarise is not None:
        try:
            return summarise(evidence)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass
    plain = ", ".join(f"{key} {_number(value)}" for key, value in evidence.items()
                      if isinstance(value, (int, float, str, bool)) or value is None)
    return textwrap.shorten(plain or "see --json for the evidence", 70, placeholder="…")


def check_json(check) -> dict:
    """A `masking.CheckResult` as JSON: its fields, full evidence and its printed summary."""
    return {**asdict(check), "summary": evidence_summary(check.name, check.evidence)}


def check_lines(checks, width: int = WIDTH) -> list[str]:
    """One line per check (name, pass/FLAG, evidence summary), a flagged check followed by its
    explanation, all wrapped within `width`; `checks` are `masking.CheckResult`s."""
    lines = []
    indent = " " * CHECK_INDENT
    for check in checks:
        head = f"{check.name:<{CHECK_INDENT - 7}} {'pass' if check.passed else 'FLAG'}  "
        lines += textwrap.wrap(evidence_summary(check.name, check.evidence), width,
                               initial_indent=head, subsequent_indent=indent)
        if not check.passed:
            lines += textwrap.wrap(check.explanation or check.flag or "", width,
                                   initial_indent=indent, subsequent_indent=indent)
    return lines
