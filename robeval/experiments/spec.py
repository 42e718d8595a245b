"""Experiment files: finding, reading and checking one (the format is in the package's docstring)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import robeval
from robeval.attacks import NORMS, ThreatModel, parse_suite
from robeval.errors import RobevalError
from robeval.evaluate import EvalConfig, check_mode
from robeval.experiments.grid import Cell, cells, safe_name, spec_setting
from robeval.findings import Finding, parse_findings
from robeval.report import FORMATS
from robeval.schema import validated
from robeval.spec import parse_eps
from robeval.train.config import SECTIONS, TrainConfig, merge
from robeval.yamlfile import read_yaml

TOP_KEYS = ("name", "description", "base", "grid", "seeds", "attack", "report", "paper", "findings",
            "checkpoint")
CHECKPOINTS = ("best", "last")   # which checkpoint of a training run is evaluated
REPORT_KEYS = ("baseline", "formats", "ci", "title")
PAPER_KEYS = ("source", "note", "tables", "rows")
ROW_KEYS = ("cell", "table", "at", "quote", "relative_to")
EVAL_FIELDS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.name not in ("data_dir", "device"))
TOP_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                   if f.name not in (*SECTIONS, "seed", "preset"))


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file (see the module docstring)."""

    name: str
    description: str
    base: dict
    grid: tuple[dict, ...]
    seeds: tuple[int, ...]
    attack: dict
    report: dict
    paper: dict | None = None
    path: Path | None = None
    findings: tuple[Finding, ...] = ()
    checkpoint: str = "best"          # best (highest validation PGD accuracy) | last (final epoch)


@dataclass
class CellResult:
    """Where a cell stands after `run_experiment`, with its headline numbers once evaluated."""

    cell: Cell
    status: str
    run_id: int | None = None
    clean: float | None = None
    worst_case: float | None = None


@dataclass
class ExperimentResult:
    """Every cell's outcome and where the report was written."""

    experiment: Experiment
    cells: list[CellResult] = field(default_factory=list)
    report: dict[str, Path] | None = None
    store: Path | None = None


# --- loading ------------------------------------------------------------------------------------

def experiment_dirs() -> list[Path]:
    """Folders searched for an experiment given by name: ./experiments, the checkout's, the installed ones."""
    return [Path.cwd() / "experiments", Path(robeval.__file__).resolve().parents[1] / "experiments",
            Path(sys.prefix) / "share" / "robeval" / "experiments"]


def find_experiment(path_or_name: str | Path) -> Path:
    """The file of an experiment given as a path or as a name from `experiment_dirs()`."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    for folder in experiment_dirs():
        for suffix in (".yaml", ".yml"):
            if (folder / f"{path_or_name}{suffix}").is_file():
                return folder / f"{path_or_name}{suffix}"
    known = sorted({p.stem for d in experiment_dirs() if d.is_dir() for p in d.glob("*.y*ml")})
    raise RobevalError(f"no experiment file {path_or_name!r}; known experiments: "
                       f"{', '.join(known) or 'none'} (or give the path of a YAML file)")


def _read_yaml(path: Path) -> dict:
    values = read_yaml(path, "experiment")
    if not isinstance(values, dict):
        raise RobevalError(f"experiment {path} must hold a mapping with keys {', '.join(TOP_KEYS)}")
    return values


def _check_keys(values: dict, known: tuple[str, ...], where: str) -> None:
    unknown = [str(k) for k in values if k not in known]
    if unknown:
        raise RobevalError(f"unknown key {unknown[0]!r} in {where}; known: {', '.join(known)}")


def _mapping(values: dict, key: str, where: str) -> dict:
    value = values.get(key) or {}
    if not isinstance(value, dict):
        raise RobevalError(f"{key!r} in {where} must be a mapping")
    return value


def check_grid_key(key: str, where: str) -> None:
    """One-line error unless `key` is `section.field` or a top-level training field."""
    section, _, name = str(key).partition(".")
    if name and section in SECTIONS:
        known = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if name in known:
            return
        raise RobevalError(f"unknown grid key {key!r} in {where}; {section} fields: {', '.join(known)}")
    if not name and section in TOP_FIELDS:
        return
    raise RobevalError(f"unknown grid key {key!r} in {where}: use section.field with a section among "
                       f"{', '.join(SECTIONS)}, or one of {', '.join(TOP_FIELDS)} (seeds go in 'seeds')")


def _parse_grid(raw: Any, where: str) -> tuple[dict, ...]:
    groups = raw if isinstance(raw, list) else [raw or {}]
    parsed = []
    for group in groups:
        if not isinstance(group, dict):
            raise RobevalError(f"'grid' in {where} must be a mapping of dotted keys to lists, "
                               "or a list of such mappings")
        for key, values in group.items():
            check_grid_key(key, where)
            if not isinstance(values, list) or not values:
                raise RobevalError(f"grid key {key!r} in {where} needs a non-empty list of values")
        parsed.append({str(k): tuple(v) for k, v in group.items()})
    return tuple(parsed)


def _parse_seeds(raw: Any, where: str) -> tuple[int, ...]:
    seeds = raw if isinstance(raw, list) else [0 if raw is None else raw]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise RobevalError(f"'seeds' in {where} must be a non-empty list of integers")
    return tuple(seeds)


def _parse_paper(raw: Any, where: str) -> dict | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise RobevalError(f"'paper' in {where} must be a mapping with keys {', '.join(PAPER_KEYS)}")
    _check_keys(raw, PAPER_KEYS, f"'paper' of {where}")
    tables = raw.get("tables") or {}
    if not isinstance(tables, dict) or not all(isinstance(v, dict) and v.get("file")
                                               for v in tables.values()):
        raise RobevalError(f"'tables' in the paper block of {where} must map names to mappings with a 'file'")
    for row in raw.get("rows") or []:
        if not isinstance(row, dict) or not isinstance(row.get("cell"), dict):
            raise RobevalError(f"each paper row in {where} needs a 'cell' mapping of grid keys to values")
        if row.get("table") is not None and row["table"] not in tables:
            raise RobevalError(f"paper row {row['cell']} of {where} names table {row['table']!r}, which "
                               f"'tables' does not define ({', '.join(tables) or 'none'})")
        for key, value in row.items():
            if key not in ROW_KEYS and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise RobevalError(f"paper row {row['cell']} of {where}: {key!r} must be a number (a metric "
                                   f"column) or one of {', '.join(ROW_KEYS)}")
    return raw


def paper_metrics(row: dict) -> dict[str, float]:
    """The metric columns of a published row, as printed (before `relative_to` is applied)."""
    return {str(k): float(v) for k, v in row.items() if k not in ROW_KEYS}


def load_experiment(path_or_name: str | Path, data_dir: str | None = None) -> Experiment:
    """Parse and check an experiment file; `data_dir` replaces base.data.data_dir."""
    path = find_experiment(path_or_name)
    values = _read_yaml(path)
    _check_keys(values, TOP_KEYS, str(path))
    base = _mapping(values, "base", str(path))
    if data_dir is not None:
        base = merge(base, {"data": {"data_dir": str(data_dir)}})
    attack, report = _mapping(values, "attack", str(path)), _mapping(values, "report", str(path))
    _check_keys(attack, EVAL_FIELDS, f"'attack' of {path}")
    _check_keys(report, REPORT_KEYS, f"'report' of {path}")
    name = str(values.get("name") or path.stem)
    if safe_name(name) != name or set(name) <= {"."}:
        raise RobevalError(f"experiment name {name!r} in {path} must use only letters, digits, "
                           "'.', '_' and '-', and not only dots (it names folders)")
    experiment = Experiment(name, str(values.get("description") or ""), base,
                            _parse_grid(values.get("grid"), str(path)),
                            _parse_seeds(values.get("seeds"), str(path)), attack, report,
                            _parse_paper(values.get("paper"), str(path)), path,
                            parse_findings(values.get("findings"), str(path)),
                            _parse_checkpoint(values.get("checkpoint"), str(path)))
    _check_paper_cells(experiment)
    _check_attack(experiment)
    _check_report(experiment)
    return experiment


def _parse_checkpoint(raw: Any, where: str) -> str:
    checkpoint = "best" if raw is None else raw
    if checkpoint not in CHECKPOINTS:
        raise RobevalError(f"'checkpoint' in {where} must be best (the epoch with the highest "
                           "validation PGD accuracy) or last (the final epoch)")
    return checkpoint


def _check_report(experiment: Experiment) -> None:
    """The `report` section's formats and baseline, checked before any cell trains."""
    where = f"'report' of {experiment.path}"
    formats = experiment.report.get("formats", FORMATS)
    names = formats.split(",") if isinstance(formats, str) else formats
    if not isinstance(names, (list, tuple)) or not names \
            or any(not isinstance(name, str) or name.strip() not in FORMATS for name in names):
        raise RobevalError(f"{where}: formats {formats!r} must be a comma-separated list of "
                           f"{', '.join(FORMATS)}")
    baseline = experiment.report.get("baseline", "first")
    known = [cell.name for cell in cells(experiment)]
    if baseline not in (None, "none", "first") and baseline not in known:
        raise RobevalError(f"{where}: baseline {baseline!r} is not first, none or a cell: "
                           f"{', '.join(known)}")


def _check_attack(experiment: Experiment) -> None:
    """Refuse an `attack` block that could not evaluate some cell, before any training."""
    where = f"'attack' of {experiment.path}"
    grid = cells(experiment)   # a bad grid value is named by its cell, not blamed on the attack
    try:
        config = validated(EvalConfig(**experiment.attack))
        check_mode(config.mode)
        threats = {(parse_eps(config.eps) if config.eps is not None else cell.config.adversary.eps,
                    NORMS.resolve(config.norm or cell.config.adversary.norm))
                   for cell in grid}
        specs = set()
        for eps, norm in sorted(threats):
            specs |= {attack.spec for attack in parse_suite(str(config.suite), ThreatModel(eps, norm))}
    except RobevalError as err:
        raise RobevalError(f"{where}: {err}") from err
    known = ("clean", "robust", "worst case", *sorted(specs))
    for finding in experiment.findings:
        if finding.metric not in known:
            raise RobevalError(f"finding {finding.claim!r} of {experiment.path} reads metric "
                               f"{finding.metric!r}, which the suite {config.suite!r} does not give; "
                               f"known: {', '.join(known)}")


def _check_paper_cells(experiment: Experiment) -> None:
    rows = (experiment.paper or {}).get("rows") or []
    for row in rows:
        spec_setting(experiment, row["cell"], "paper row")
        if row.get("relative_to") is not None:
            spec_setting(experiment, row["relative_to"], "relative_to of a paper row")
    for finding in experiment.findings:
        better = spec_setting(experiment, finding.better, "finding")
        if better == spec_setting(experiment, finding.worse, "finding"):
            raise RobevalError(f"finding {finding.claim!r} of {experiment.path}: better and worse name "
                               "the same cell")
    published = published_values(experiment)
    for finding in experiment.findings:
        for spec in (finding.better, finding.worse):
            if finding.paper_metric not in published.get(spec_setting(experiment, spec, "finding"), {}):
                raise RobevalError(f"finding {finding.claim!r} of {experiment.path}: no published row for "
                                   f"{spec} gives {finding.paper_metric!r}; add it to paper.rows")


def published_values(experiment: Experiment) -> dict[str, dict[str, float]]:
    """The published metrics by setting (see `setting_key`), with `relative_to` rows made absolute."""
    rows = (experiment.paper or {}).get("rows") or []
    keyed = [(spec_setting(experiment, row["cell"], "paper row"), row) for row in rows]
    plain = {key: paper_metrics(row) for key, row in keyed if row.get("relative_to") is None}
    values = dict(plain)
    for key, row in keyed:
        if row.get("relative_to") is None:
            continue
        reference = plain.get(spec_setting(experiment, row["relative_to"], "relative_to of a paper row"), {})
        missing = [m for m in paper_metrics(row) if m not in reference]
        if missing:
            raise RobevalError(f"paper row {row['cell']} of {experiment.path} is relative to "
                               f"{row['relative_to']}, whose row gives no {missing[0]!r}")
        values[key] = {m: round(reference[m] + v, 4) for m, v in paper_metrics(row).items()}
    return values
