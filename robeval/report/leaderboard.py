"""What the HTML site shows: one `RunEntry` per evaluation run of a report, read from the store.

An entry holds the run's numbers (clean, each attack, worst case, with intervals and
image-passes), which AutoAttack it ran, its corruptions mean (`corruptions_mean`, the one place
that reads corruption results), its masking checks and engine notes, its settings, training
facts and provenance, the recorded config the reproducing commands are built from, its
per-class accuracy and the points of its ε-curve. An unfinished run (shown only with
`--include-unfinished`) keeps its marker and settings but no number: its figures would cover
only the committed batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from robeval.attacks.corruptions import CORRUPTIONS, SEVERITIES
from robeval.data import dataset_info
from robeval.errors import RobevalError
from robeval.report.collect import ReportData, per_class
from robeval.report.tables import activation_label, model_labels, number
from robeval.results import ResultsStore
from robeval.sources import format_eps
from robeval.spec import parse_spec

AUTOATTACKS = ("aa", "aa-fast", "aa-plus", "aa-rand")   # attack names that are AutoAttack
STEPPED_METHODS = ("pgd", "trades")   # training methods shown with their number of steps
SUMMARY_ROWS = ("clean", "worst case")
TRAINING_FACTS = ("arch", "method", "train_steps", "train_eps", "epochs", "train_dataset", "seed",
                  "optimizer", "weight_decay", "label_smoothing", "schedule", "batch_size",
                  "warmup_epochs", "eps_warmup_epochs", "bn_mode", "smooth_grad")


@dataclass(frozen=True)
class Metric:
    """One row of a run's summary: accuracy with its interval, and image-passes per test image."""

    accuracy: float
    ci_low: float
    ci_high: float
    passes_per_image: float


@dataclass
class RunEntry:
    """Everything the leaderboard row and the page of one evaluation run show."""

    run_id: int
    model: str                     # the name the run was stored under, as given
    label: str                     # the tables' row label: arch, activation, method, ...
    activation: str | None         # as the tables show it: "elu(α=0.5)"
    activation_spec: str | None    # as recorded: "elu(alpha=0.5)"
    method: str | None
    eps: float
    norm: str
    unfinished: str                # '' when finished, else "unfinished: B/T batches"
    attacks: list[str]             # the suite, in order
    metrics: dict[str, Metric]     # clean, each attack, worst case; empty when unfinished
    checks: dict[str, dict]        # masking check name -> its stored result
    notes: list[str]               # what the engine noted about the attacks
    setup: dict[str, str]          # what was evaluated and how, for people
    training: dict[str, str]       # the training facts a robeval checkpoint recorded
    provenance: dict[str, str]
    config: dict                   # the recorded config, for the reproducing commands
    run: Any                       # the store's row of the run (`ResultsStore.runs`)
    history: str | None            # history.jsonl of the training run, when it exists
    corruptions: float | None = None   # mean accuracy under common corruptions, when measured
    corruptions_coverage: str | None = None   # `types × severities` when not all were measured
    class_names: tuple[str, ...] = ()
    per_class: pd.DataFrame | None = None              # class, clean, robust (finished runs)
    eps_curve: pd.DataFrame = field(default_factory=pd.DataFrame)   # label, activation_name, eps, accuracy

    def accuracy(self, metric: str) -> float | None:
        """The accuracy of `metric` (a fraction), None when not measured or unfinished."""
        found = self.metrics.get(metric)
        return None if found is None or math.isnan(found.accuracy) else found.accuracy

    def autoattack(self) -> tuple[str, float | None] | None:
        """(spec, accuracy) of the suite's AutoAttack (`aa`, `aa-fast`, ...), None without one."""
        specs = [spec for spec in self.attacks if attack_name(spec) in AUTOATTACKS]
        return None if not specs else (specs[-1], self.accuracy(specs[-1]))

    def passes(self) -> float | None:
        """Image-passes per test image of all attacks together (None when not counted)."""
        found = self.metrics.get("worst case")
        value = None if found is None else found.passes_per_image
        return None if value is None or math.isnan(value) else value

    def flags(self) -> list[str]:
        """The masking checks that raised a flag, by name."""
        return [name for name, check in sorted(self.checks.items()) if not check.get("passed", True)]


def attack_name(spec: str) -> str:
    """The attack name of a suite item (`aa-fast(iters=10)` → aa-fast); the item when unparsed."""
    try:
        return parse_spec(str(spec))[0].lower()
    except RobevalError:
        return str(spec).lower()


def corruptions_mean(data: ReportData, run_id: int) -> float | None:
    """Accuracy under common corruptions averaged over types and severities (each type's mean
    over its severities, then the mean over types, as RobustBench reports it), from the
    `corruptions` frame of the collected data; None for a run without corruptions."""
    rows = _corruption_rows(data, run_id)
    if rows.empty:
        return None
    value = float(rows.groupby("corruption", sort=False)["accuracy"].mean().mean())
    return None if math.isnan(value) else value


def _corruption_rows(data: ReportData, run_id: int) -> pd.DataFrame:
    """The run's rows of the collected `corruptions` frame (empty when it has none)."""
    frame = getattr(data, "corruptions", None)
    return pd.DataFrame() if frame is None or frame.empty else frame[frame["run_id"] == run_id]


def corruptions_coverage(data: ReportData, run_id: int) -> str | None:
    """`types × severities` of a run that measured only part of the 15 types × 5 severities (its
    mean is then not comparable with a full one); None for a full or absent measurement."""
    rows = _corruption_rows(data, run_id)
    if rows.empty:
        return None
    types, severities = rows["corruption"].nunique(), rows["severity"].nunique()
    if types >= len(CORRUPTIONS.names()) and severities >= len(SEVERITIES):
        return None
    return f"{types} type{'s' * (types != 1)} × {severities} severit{'ies' if severities != 1 else 'y'}"


def _metrics(store: ResultsStore, run_id: int) -> dict[str, Metric]:
    summary = store.summary(run_id)
    return {str(name): Metric(float(row["accuracy"]), float(row["ci_low"]), float(row["ci_high"]),
                              float(row["passes_per_image"])) for name, row in summary.iterrows()}


def _method(row: pd.Series) -> str | None:
    method = row.get("method")
    if not isinstance(method, str):
        return None
    steps = row.get("train_steps")
    if method in STEPPED_METHODS and isinstance(steps, (int, float)) and not math.isnan(steps):
        return f"{method} ({int(steps)} step{'s' * (int(steps) != 1)})"
    return method


def _shown(key: str, value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return format_eps(float(value)) if key == "train_eps" else number(value)


def _training(row: pd.Series) -> dict[str, str]:
    facts = {key: _shown(key, row.get(key)) for key in TRAINING_FACTS}
    return {key: value for key, value in facts.items() if value is not None}


def _setup(run) -> dict[str, str]:
    return {"dataset": str(run.dataset), "ε": format_eps(float(run.eps)), "norm": str(run.norm),
            "test images": str(int(run.n)), "mode": str(run.mode), "suite": ", ".join(run.attacks),
            "batch size": str(int(run.batch_size)), "seed": str(int(run.seed))}


def _provenance(run, store: ResultsStore) -> dict[str, str]:
    versions = run.versions or {}
    finished = run.finished_at
    return {"run": str(int(run.id)), "store": str(store.path),
            "checkpoint sha256": str(run.checkpoint_hash or "unknown"),
            "git commit": str(run.git_commit or "unknown"),
            "robeval version": str(versions.get("robeval", "unknown")),
            "versions": ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "unknown",
            "device": str(run.device),
            "finished": finished.strftime("%Y-%m-%d %H:%M UTC") if not pd.isna(finished) else "unfinished"}


def _model_key(run) -> tuple:
    """Runs of one model under one threat-model norm on one dataset share an ε-curve."""
    return (run.checkpoint_hash or f"name:{run.model}", run.norm, run.dataset)


def eps_points(entry: RunEntry, others: list[RunEntry]) -> pd.DataFrame:
    """The ε-curve of a run: worst-case accuracy of every finished run of the same model (same
    checkpoint, norm and dataset), and the PGD-20 accuracies at ε, 2ε, 4ε of its larger_eps check."""
    rows = [{"label": "worst case (stored runs)", "eps": other.eps, "accuracy": other.accuracy("worst case")}
            for other in others if _model_key(other.run) == _model_key(entry.run)]
    evidence = (entry.checks.get("larger_eps") or {}).get("evidence") or {}
    for eps, accuracy in zip(evidence.get("eps") or [], evidence.get("accuracy") or [], strict=False):
        rows.append({"label": "PGD-20 (larger_eps check)", "eps": eps, "accuracy": accuracy})
    frame = pd.DataFrame(rows, columns=["label", "eps", "accuracy"]).dropna()
    frame = frame.drop_duplicates(subset=["label", "eps"]).sort_values(["label", "eps"])
    frame.insert(1, "activation_name", entry.activation_spec)   # coloured as in every figure
    return frame.reset_index(drop=True)


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _entry(row: pd.Series, label: str, run, store: ResultsStore, data: ReportData) -> RunEntry:
    marker = str(row.get("unfinished") or "")
    run_id = int(run.id)
    classes = dataset_info(str(run.dataset)).classes if not marker else ()
    return RunEntry(
        run_id=run_id, model=str(run.model), label=label,
        activation=activation_label(row.get("activation_name"), row.get("activation_params"),
                                    row.get("activation")),
        activation_spec=_text(row.get("activation")), method=_method(row), eps=float(run.eps),
        norm=str(run.norm), unfinished=marker, attacks=list(run.attacks),
        metrics={} if marker else _metrics(store, run_id),
        checks=dict(row.get("checks") or {}), notes=list(row.get("engine_notes") or []),
        setup=_setup(run), training=_training(row), provenance=_provenance(run, store),
        config=dict(run.config or {}), run=run, history=_text(row.get("history")),
        corruptions=None if marker else corruptions_mean(data, run_id),
        corruptions_coverage=None if marker else corruptions_coverage(data, run_id),
        class_names=tuple(classes), per_class=None if marker else per_class(store, run_id))


def site_entries(store: ResultsStore, data: ReportData) -> list[RunEntry]:
    """One entry per run of `data` (the runs of a report), in the order of `data.models`."""
    runs = {int(run.id): run for run in store.runs().itertuples(index=False)}
    labels = model_labels(data.models)
    entries = [_entry(row, str(labels[run_id]), runs[int(run_id)], store, data)
               for run_id, row in data.models.iterrows()]
    finished = [entry for entry in entries if not entry.unfinished]
    for entry in finished:
        entry.eps_curve = eps_points(entry, finished)
    return entries
