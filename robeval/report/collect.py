"""Gather what a report needs from the results store: one row per evaluated model.

`collect(store)` returns three frames: `models` (one row per evaluation run, with the model's
architecture, activation, training method and tricks from its recorded config), `metrics`
(long: run_id, metric, accuracy, ci_low, ci_high, seconds, n, forward_passes, backward_passes,
passes_per_image; metric is 'clean', an attack spec or 'worst case', the last only for runs
with attacks) and `corruptions` (long: run_id, corruption, severity and the same columns, for
runs whose suite held the common corruptions; empty when none did).

Only finished evaluations are collected unless unfinished ones are asked for; those carry an
`unfinished` marker ("unfinished: 2/10 batches") that every table row and figure label shows,
since their figures cover only the committed batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robeval.activations import get_activation
from robeval.errors import RobevalError
from robeval.results import ResultsStore

CORRUPTION_COLUMNS = ["run_id", "corruption", "severity", "accuracy", "ci_low", "ci_high", "correct",
                      "n", "seconds", "forward_passes", "backward_passes", "passes_per_image"]

# Training settings shown as "tricks" (Bag of Tricks) when they differ across models.
TRICKS = ("optimizer", "weight_decay", "label_smoothing", "bn_mode", "schedule", "batch_size",
          "warmup_epochs", "eps_warmup_epochs", "epochs", "smooth_grad")


@dataclass
class ReportData:
    """Models and their metrics, ready for tables and figures."""

    models: pd.DataFrame
    metrics: pd.DataFrame
    corruptions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CORRUPTION_COLUMNS))

    def finished(self) -> ReportData:
        """The same data without the unfinished runs."""
        if self.models.empty or "unfinished" not in self.models:
            return self
        keep = self.models[self.models["unfinished"] == ""]
        return ReportData(keep, self.metrics[self.metrics["run_id"].isin(keep.index)],
                          self.corruptions[self.corruptions["run_id"].isin(keep.index)])

    def corruption_summary(self, run_id: int) -> pd.DataFrame:
        """One run's `ResultsStore.corruption_summary` (empty when it has no corruptions)."""
        rows = self.corruptions[self.corruptions["run_id"] == run_id]
        return rows.drop(columns="run_id").set_index(["corruption", "severity"])

    def accuracy_table(self, value: str = "accuracy") -> pd.DataFrame:
        """Wide: one row per run, one column per metric (clean, attacks in order, worst case)."""
        wide = self.metrics.pivot(index="run_id", columns="metric", values=value)
        return wide[metric_order(self.metrics)]


def metric_order(metrics: pd.DataFrame) -> list[str]:
    """clean, the attacks in the order they first appear, worst case (when any run has attacks)."""
    seen = list(dict.fromkeys(metrics["metric"]))
    attacks = [m for m in seen if m not in ("clean", "worst case")]
    return ["clean", *attacks, *(["worst case"] if "worst case" in seen or not len(metrics) else [])]


def _training(config: dict) -> dict:
    """The training facts of a robeval checkpoint's recorded config (empty for others)."""
    model = config.get("model") or {}
    if "adversary" not in model:  # plain state_dict or RobustBench model
        return {"arch": model.get("arch") or model.get("name"), "activation": model.get("activation")}
    adversary, optim, net = model["adversary"], model["optim"], model["model"]
    facts = {"arch": net["arch"], "activation": net["activation"], "smooth_grad": net["smooth_grad"],
             "method": adversary["method"], "train_steps": adversary["steps"],
             "train_eps": adversary["eps"], "bn_mode": adversary["bn_mode"],
             "eps_warmup_epochs": adversary["eps_warmup_epochs"], "epochs": model["epochs"],
             "train_dataset": model["data"]["dataset"], "seed": model["seed"]}
    facts.update({key: optim[key] for key in ("optimizer", "weight_decay", "label_smoothing",
                                              "schedule", "batch_size", "warmup_epochs")})
    return facts


def _activation_parts(spec: str | None) -> tuple[str | None, dict]:
    if not spec:
        return None, {}
    try:
        entry, params = get_activation(spec)
    except Exception:  # an activation from elsewhere: keep its name as recorded
        return spec, {}
    return entry.name, params


def history_path(source: dict) -> str | None:
    """history.jsonl of the training run a checkpoint came from, when it exists."""
    path = source.get("path")
    if not path:
        return None
    candidate = Path(path).parent / "history.jsonl"
    return str(candidate) if candidate.is_file() else None


def unfinished_marker(run) -> str:
    """'' for a finished run, else 'unfinished: B/T batches' (committed of total)."""
    if run.status == "finished":
        return ""
    total = -(-int(run.n) // max(int(run.batch_size), 1))
    return f"unfinished: {int(run.batches)}/{total} batches"


def check_run_ids(runs: pd.DataFrame, run_ids: list[int], include_unfinished: bool, path) -> None:
    """Every asked-for run exists and, unless asked for, is finished; else a one-line error."""
    by_id = {run.id: run for run in runs.itertuples(index=False)}
    missing = [run_id for run_id in run_ids if run_id not in by_id]
    if missing:
        known = ", ".join(map(str, by_id)) or "none"
        raise RobevalError(f"no run with id {missing[0]} in {path} (its runs: {known}): "
                           "pick an id it holds")
    for run_id in run_ids:
        marker = unfinished_marker(by_id[run_id])
        if marker and not include_unfinished:
            raise RobevalError(f"run {run_id} in {path} did not finish ({marker}): rerun its "
                               "`robeval attack` command to finish it, or pass --include-unfinished")


def engine_notes(store: ResultsStore, run_id: int) -> list[str]:
    """What the engine noted about the run's attacks: aa-fast's gate on every batch (fired or
    not, and by which flags), unconfirmed breaks, projected examples, majority verdicts."""
    return [line for spec, notes in store.attack_notes(run_id).items() for line in notes.lines(spec)]


def per_class(store: ResultsStore, run_id: int) -> pd.DataFrame:
    """Clean and worst-case robust accuracy per true class of one run."""
    samples = store.per_sample(run_id)
    grouped = samples.groupby("label")
    return pd.DataFrame({"class": grouped.size().index, "clean": grouped["clean_correct"].mean().values,
                         "robust": grouped["robust"].mean().values})


def collect(store: ResultsStore, run_ids: list[int] | None = None,
            include_unfinished: bool = False) -> ReportData:
    """One row per finished evaluation run (diagnose-only runs are left out).

    With `include_unfinished`, runs still 'running' (stopped or in progress) are kept too,
    each marked by `unfinished_marker` in the `unfinished` column and in its label.
    """
    runs = store.runs()
    if run_ids is not None:
        check_run_ids(runs, run_ids, include_unfinished, store.path)
    model_rows, metric_rows, corruption_rows = [], [], []
    for run in runs.itertuples(index=False):
        if run_ids is not None and run.id not in run_ids:
            continue
        if not (run.attacks or run.corruptions) or (run.notes or {}).get("kind") == "diagnose":
            continue
        marker = unfinished_marker(run)
        if marker and not include_unfinished:
            continue
        config = run.config or {}
        facts = _training(config)
        name, params = _activation_parts(facts.get("activation"))
        checks = (run.notes or {}).get("checks", {})
        model_rows.append({
            "run_id": run.id, "label": f"{run.model} [{marker}]" if marker else run.model,
            "unfinished": marker, "dataset": run.dataset, "eps": run.eps,
            "norm": run.norm, "n": run.n, "mode": run.mode, "attacks": list(run.attacks),
            **facts, "activation_name": name, "activation_params": params,
            "history": history_path(config.get("source") or {}),
            "flags": [name for name, check in checks.items() if not check.get("passed", True)],
            "checks": checks, "engine_notes": engine_notes(store, run.id),
            "device": run.device, "git_commit": run.git_commit,
            "versions": run.versions,
        })
        summary = store.summary(run.id)
        for metric, values in summary.iterrows():
            metric_rows.append({"run_id": run.id, "metric": metric, **values.to_dict()})
        for (corruption, severity), values in store.corruption_summary(run.id).iterrows():
            corruption_rows.append({"run_id": run.id, "corruption": corruption, "severity": severity,
                                    **values.to_dict()})
    models = pd.DataFrame(model_rows)
    metrics = pd.DataFrame(metric_rows, columns=["run_id", "metric", "accuracy", "ci_low",
                                                 "ci_high", "correct", "n", "seconds",
                                                 "forward_passes", "backward_passes",
                                                 "passes_per_image"])
    if not models.empty:
        models = models.set_index("run_id", drop=False)
    return ReportData(models, metrics, pd.DataFrame(corruption_rows, columns=CORRUPTION_COLUMNS))
