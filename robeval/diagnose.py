"""`robeval diagnose`: gradient-quality diagnostics and gradient-masking checks for one model."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd

from robeval.data import load_test_set
from robeval.device import resolve_device
from robeval.diagnostics.explain import (
    WIDTH,
    check_json,
    check_lines,
    gradient_lines,
    quantity_label,
    quantity_unit,
)
from robeval.diagnostics.gradients import batch_diagnostics, summarise
from robeval.diagnostics.masking import CheckResult, check_names, run_checks, strict_json
from robeval.errors import RobevalError
from robeval.evaluate import EvalConfig, git_commit, guarded, library_versions, prepare_model, resolve
from robeval.identity import ModelSource, source_identity
from robeval.results import ResultsStore, RunRecord


@dataclass
class Diagnosis:
    """Gradient-quality summary (one row per quantity) and the masking checks' verdicts."""

    run_id: int | None
    gradients: pd.DataFrame
    checks: list[CheckResult]
    pgd_steps: int = 10          # K of the PGD perturbation behind R_pgd, grad_lipschitz, loss_gap
    model: str | None = None
    eps: float | None = None
    norm: str | None = None
    n: int | None = None

    @property
    def flags(self) -> list[CheckResult]:
        """The checks that raised a flag."""
        return [check for check in self.checks if not check.passed]


def checks_table(checks: list[CheckResult]) -> pd.DataFrame:
    """One row per check: verdict, flag and evidence."""
    return pd.DataFrame({
        "check": [c.name for c in checks],
        "verdict": ["pass" if c.passed else "FLAG" for c in checks],
        "flag": [c.flag or "" for c in checks],
        "evidence": [json.dumps(c.evidence, sort_keys=True) for c in checks],
    }).set_index("check")


def checks_notes(checks: list[CheckResult]) -> dict:
    """The checks as JSON-ready dicts, for the results store."""
    return {check.name: asdict(check) for check in checks}


def diagnose(source: ModelSource, config: EvalConfig, store: ResultsStore | None,
             checks: str = "all", pgd_steps: int = 10,
             log: Callable[[str], None] = print) -> Diagnosis:
    """Gradient diagnostics on the first `config.n` test images, then the masking checks."""
    if pgd_steps < 1:
        raise RobevalError(f"--pgd-steps {pgd_steps} must be at least 1 (e.g. 10)")
    check_names(checks)  # before any work: a misspelt check must not cost the diagnostics
    plan = resolve(config, source)
    device = resolve_device(config.device)
    test = load_test_set(plan.dataset, plan.data_dir, plan.n)
    images, labels = test.images.to(device).float() / 255, test.labels.to(device)
    model = guarded(prepare_model(source.model, device), source)
    log(f"measuring gradient quality on {len(labels)} images (eps {plan.eps:.4g}, {plan.norm})")
    values = batch_diagnostics(model, images, labels, plan.eps, plan.norm, pgd_steps=pgd_steps,
                               seed=plan.seed)
    gradients = summarise(values)
    log(f"running the gradient-masking checks ({checks})")
    results = run_checks(model, images, labels, eps=plan.eps, norm=plan.norm, seed=plan.seed,
                         names=checks)
    run_id = None
    if store is not None:
        run_id = record_diagnosis(store, source, plan, len(labels), str(device), gradients,
                                  results)
    return Diagnosis(run_id, gradients, results, pgd_steps, source.name, plan.eps, plan.norm,
                     len(labels))


def record_diagnosis(store: ResultsStore, source: ModelSource, plan, n: int, device: str,
                     gradients: pd.DataFrame, checks: list[CheckResult]) -> int:
    """A run without attacks whose notes hold the diagnostics and the checks."""
    identity = {"diagnose": source_identity(source), "eps": plan.eps,
                "norm": plan.norm, "n": n, "seed": plan.seed, "dataset": plan.dataset}
    key = "diagnose-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    record = RunRecord(model=source.name, checkpoint_hash=source.checkpoint_hash,
                       config={"diagnose": identity, "model": source.config}, dataset=plan.dataset,
                       n=n, eps=plan.eps, norm=plan.norm, seed=plan.seed, batch_size=n,
                       mode="cascade", attacks=[], versions=library_versions(), device=device,
                       git_commit=git_commit())
    run_id = store.open_run(key, record, fresh=True)
    store.set_notes(run_id, {"kind": "diagnose",
                             "gradients": json.loads(gradients.to_json(orient="index")),
                             "checks": checks_notes(checks)})
    store.finish_run(run_id)
    return run_id


def summary_lines(diagnosis: Diagnosis, store: str | None = None, width: int = WIDTH) -> list[str]:
    """What `robeval diagnose` and `diagnose_model` print, within `width` columns: the gradient
    diagnostics under their papers' names, one line per check with a few words of evidence (a
    flagged check followed by its explanation), and a count of the flags. `store` names where
    the diagnosis was recorded."""
    where = "" if diagnosis.n is None else f" on {diagnosis.n} images"
    if diagnosis.eps is not None:
        where += f" at ε = {eps_text(diagnosis.eps, diagnosis.norm)}"
    lines = [f"gradient diagnostics{where}"]
    lines += gradient_lines(diagnosis.gradients, diagnosis.pgd_steps, width)
    lines += ["", "gradient-masking checks (the full evidence: --json, or the results store)"]
    lines += check_lines(diagnosis.checks, width)
    footer = f"{len(diagnosis.flags)} of {len(diagnosis.checks)} checks flagged"
    if store is not None and diagnosis.run_id is not None:
        footer += f"; stored in {store} (run {diagnosis.run_id})"
    return lines + textwrap.wrap(footer, width)


def eps_text(eps: float, norm: str | None) -> str:
    """ε as people write it: 8/255 (L∞ radii that are whole 255ths) or the number, with the norm."""
    in_255 = eps * 255
    whole = norm == "linf" and round(in_255) > 0 and abs(in_255 - round(in_255)) < 1e-6
    return (f"{round(in_255)}/255" if whole else f"{eps:.4g}") + ("" if norm is None else f" ({norm})")


def diagnosis_json(diagnosis: Diagnosis) -> dict:
    """The whole diagnosis as one JSON-ready document (`robeval diagnose --json`): every
    statistic of every gradient quantity under its code with its label and unit, every check
    with its full evidence, and the flag lines."""
    table = json.loads(diagnosis.gradients.to_json(orient="index"))
    gradients = {code: {"label": quantity_label(code, diagnosis.pgd_steps),
                        "unit": quantity_unit(code), **row} for code, row in table.items()}
    return strict_json({"run_id": diagnosis.run_id, "model": diagnosis.model, "eps": diagnosis.eps,
                        "norm": diagnosis.norm, "n": diagnosis.n, "pgd_steps": diagnosis.pgd_steps,
                        "gradients": gradients,
                        "checks": [check_json(check) for check in diagnosis.checks],
                        "flags": flag_lines(diagnosis.checks)})


def flag_lines(checks: list[CheckResult]) -> list[str]:
    """One line per raised flag, for the end of `robeval attack` and `robeval diagnose`."""
    return [f"FLAG {check.name}: {check.flag}" for check in checks if not check.passed]
