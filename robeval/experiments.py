"""Experiments: a grid of training runs, their evaluation and one report, from a YAML file.

An experiment file describes a study end to end::

    name: quickstart                  # folder under checkpoints/ and reports/ (default: file stem)
    description: ReLU against GELU under PGD-1 training on the embedded digits
    base:                             # a preset plus nested overrides, as `robeval train --config`
      preset: ci-small
      data: {dataset: digits}
    grid:                             # dotted keys -> lists; the cells are their product
      model.activation: [relu, gelu]
    seeds: [0]                        # every cell is trained once per seed (default [0])
    attack: {suite: "fgsm,pgd10,apgd-ce", n: 300}   # EvalConfig fields except data_dir/device
    report: {baseline: first}         # baseline: first | none | a cell name; formats; ci; title
    paper:                            # optional published numbers shown beside ours
      source: "Xie et al., Smooth Adversarial Training, Figure 3"
      note: "what differs (dataset, model, epochs)"
      tables:                         # where the rows are printed in the paper's text (tests check it)
        t1: {file: sat-smooth-adversarial-training.md, caption: "Table 1:",
             metrics: {clean: "Accuracy (%)", robust: "Robustness (%)"}}
      rows:
        - {cell: {model.activation: relu}, table: t1, at: [ResNet-50, ✗, ✗], clean: 68.8, robust: 33.0}
        - {cell: {model.activation: silu}, clean: 69.7, robust: 42.3,
           quote: "achieve 42.3% robustness and 69.7% standard accuracy"}
    findings:                         # the paper's claims as comparisons of two cells (robeval.findings)
      - {claim: "SiLU is more robust than ReLU", better: {model.activation: silu},
         worse: {model.activation: relu}, metric: robust}

`grid` may also be a list of such mappings: the cells are then the union of their products
(identical configurations are trained once), which varies one setting at a time around `base`
as in Bag of Tricks; each single-key group also gets a table of its own in report.md.
Grid keys are `section.field` (sections data, model, adversary, optim) or a top-level training
field such as `epochs`; seeds come from `seeds`, never from the grid.

`run_experiment` trains every cell into `root/checkpoints/<name>/<cell>`, evaluates it into
`root/reports/<name>/robeval.sqlite` and renders `root/reports/<name>/report`. Interrupted work
continues where it stopped: a cell whose training finished is not trained again, and an
evaluation resumes at its first unfinished batch. Published numbers, when given, are set beside ours in a
table of the report, and each finding gets the paper's difference, ours with a 95% interval and
a verdict (see robeval.findings).

A published row's metric columns are any keys besides `cell`, `table`, `at`, `quote` and
`relative_to`: `clean`, `robust` (the paper's headline robustness) or an attack name (`pgd10`,
`pgd50`, `aa`). `relative_to` names the cell of another row when the paper prints this row as a
difference from that one (SAT Table 2); its values are then added to the other row's. `table`
and `at` (row labels, or a mapping with `row` and `column`), or `quote` (a passage of the
running text holding the numbers), say where the numbers are printed; tests/test_paper_numbers.py
checks every number there. None of this changes what is trained: a cell's identity is its
training configuration.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import robeval
from robeval.checkpoints import atomic_write_text, read_jsonl
from robeval.errors import RobevalError
from robeval.evaluate import EvalConfig, evaluate, resolve, run_key
from robeval.findings import Finding, parse_findings
from robeval.results import ResultsStore
from robeval.train.config import SECTIONS, TrainConfig, config_to_dict, merge, resolve_config

TOP_KEYS = ("name", "description", "base", "grid", "seeds", "attack", "report", "paper", "findings")
REPORT_KEYS = ("baseline", "formats", "ci", "title")
PAPER_KEYS = ("source", "note", "tables", "rows")
ROW_KEYS = ("cell", "table", "at", "quote", "relative_to")
EVAL_FIELDS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.name not in ("data_dir", "device"))
TOP_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                   if f.name not in (*SECTIONS, "seed", "preset"))
FINISHED_MARKER = "finished.json"
STORE_NAME = "robeval.sqlite"
STATUSES = ("done", "trained", "partial", "todo")


@dataclass(frozen=True)
class Cell:
    """One training run of an experiment: its grid values, seed and resolved configuration."""

    name: str
    overrides: dict
    seed: int
    config: TrainConfig


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
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise RobevalError(f"experiment {path} is not UTF-8 text ({err.reason} at byte "
                           f"{err.start}): save it as UTF-8") from err
    except yaml.YAMLError as err:
        raise RobevalError(f"experiment {path} is not valid YAML: {str(err).splitlines()[0]}") from err
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
    if safe_name(name) != name:
        raise RobevalError(f"experiment name {name!r} in {path} must use only letters, digits, "
                           "'.', '_' and '-'")
    experiment = Experiment(name, str(values.get("description") or ""), base,
                            _parse_grid(values.get("grid"), str(path)),
                            _parse_seeds(values.get("seeds"), str(path)), attack, report,
                            _parse_paper(values.get("paper"), str(path)), path,
                            parse_findings(values.get("findings"), str(path)))
    _check_paper_cells(experiment)
    _check_attack(experiment)
    return experiment


def _check_attack(experiment: Experiment) -> None:
    """Refuse an `attack` block that could not evaluate some cell, before any training."""
    from robeval.attacks import NORMS, ThreatModel, parse_suite
    from robeval.evaluate import MODES, check_batch_size
    from robeval.spec import parse_eps

    where = f"'attack' of {experiment.path}"
    try:
        config = EvalConfig(**experiment.attack)
        if config.mode not in MODES:
            raise RobevalError(f"unknown mode {config.mode!r}; known: {', '.join(MODES)}")
        check_batch_size(config.batch_size)
        if config.n is not None and (not isinstance(config.n, int) or config.n < 1):
            raise RobevalError(f"n={config.n!r} must be a positive whole number of test images")
        threats = {(parse_eps(config.eps) if config.eps is not None else cell.config.adversary.eps,
                    NORMS.resolve(config.norm or cell.config.adversary.norm))
                   for cell in cells(experiment)}
        for eps, norm in sorted(threats):
            parse_suite(str(config.suite), ThreatModel(eps, norm))
    except RobevalError as err:
        raise RobevalError(f"{where}: {err}") from err


# --- cells --------------------------------------------------------------------------------------

def safe_name(text: str) -> str:
    """`text` with every character outside [A-Za-z0-9._=,+-] turned into '-', runs collapsed."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._=,+-]", "-", str(text))).strip("-")


def _nested(overrides: dict) -> dict:
    nested: dict = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            nested.setdefault(section, {})[name] = value
        else:
            nested[section] = value
    return nested


def _labels(experiment: Experiment) -> dict[str, str]:
    """Short labels for grid keys: the field name, or the whole key where field names clash."""
    keys = list(dict.fromkeys(k for group in experiment.grid for k in group))
    short = [k.rpartition(".")[2] for k in keys]
    return {k: s if short.count(s) == 1 else k for k, s in zip(keys, short, strict=True)}


def _make_cell(experiment: Experiment, overrides: dict, seed: int, labels: dict) -> Cell:
    parts = [f"{labels[k]}={safe_name(v)}" for k, v in overrides.items()] + [f"seed={seed}"]
    values = merge(merge(experiment.base, _nested(overrides)), {"seed": seed})
    preset = values.pop("preset", None)
    try:
        config = resolve_config(preset, None, values)
    except RobevalError as err:
        raise RobevalError(f"experiment {experiment.name}, cell {','.join(parts)}: {err}") from err
    return Cell(safe_name(",".join(parts)), overrides, seed, config)


def grid_groups(experiment: Experiment) -> list[list[Cell]]:
    """The cells of each grid group (a group's product × seeds), before removing duplicates."""
    labels = _labels(experiment)
    groups = []
    for group in experiment.grid:
        keys = list(group)
        combos = itertools.product(*(group[k] for k in keys))
        groups.append([_make_cell(experiment, dict(zip(keys, combo, strict=True)), seed, labels)
                       for combo in combos for seed in experiment.seeds])
    return groups


def _config_key(cell: Cell) -> str:
    return json.dumps(config_to_dict(cell.config), sort_keys=True)


def cells(experiment: Experiment) -> list[Cell]:
    """Every distinct training run: the grid product × seeds (the first name of a duplicate wins)."""
    seen: dict[str, Cell] = {}
    names: dict[str, Cell] = {}
    for cell in itertools.chain.from_iterable(grid_groups(experiment)):
        key = _config_key(cell)
        if key in seen:
            continue
        if cell.name in names:
            raise RobevalError(f"experiment {experiment.name}: two different cells are both named "
                               f"{cell.name!r}; make their grid values differ in more than punctuation")
        seen[key] = names[cell.name] = cell
    return list(seen.values())


def _matches(cell: Cell, wanted: dict) -> bool:
    return all(str(k) in cell.overrides and str(cell.overrides[str(k)]) == str(v) for k, v in wanted.items())


def setting_key(cell: Cell) -> str:
    """A cell's training configuration without its seed: the seeds of one setting share it."""
    values = config_to_dict(cell.config)
    values.pop("seed")
    return json.dumps(values, sort_keys=True)


def spec_label(spec: dict) -> str:
    """ "activation=silu, smooth_grad=both" for a mapping of grid keys to values."""
    return ", ".join(f"{str(k).rpartition('.')[2]}={v}" for k, v in spec.items())


def spec_setting(experiment: Experiment, spec: dict, what: str) -> str:
    """The one setting (see `setting_key`) whose grid values include `spec`; one-line error otherwise.

    Grid groups are searched before duplicates are removed, so {adversary.bn_mode: eval} finds the
    baseline even when another group's cell trained it under another name. Where several settings
    match, the one whose grid values are exactly `spec` wins ({model.activation: relu} beside a
    group {model.activation: [relu], model.smooth_grad: [both]}).
    """
    every = itertools.chain.from_iterable(grid_groups(experiment))
    matching = [cell for cell in every if _matches(cell, spec)]
    found = {setting_key(cell) for cell in matching}
    exact = {setting_key(cell) for cell in matching if len(cell.overrides) == len(spec)}
    if len(found) > 1 and len(exact) == 1:
        found = exact
    if len(found) != 1:
        problem = "matches no cell of the grid" if not found else (
            f"matches {len(found)} different settings; name more grid keys")
        raise RobevalError(f"{what} {spec} of {experiment.path or experiment.name} {problem}")
    return found.pop()


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


# --- status -------------------------------------------------------------------------------------

def run_dir(experiment: Experiment, cell: Cell, root: Path = Path(".")) -> Path:
    """The training run folder of a cell."""
    return Path(root) / "checkpoints" / experiment.name / cell.name


def report_dir(experiment: Experiment, root: Path = Path(".")) -> Path:
    """The folder holding the experiment's results store and report."""
    return Path(root) / "reports" / experiment.name


def training_finished(folder: Path, config: TrainConfig) -> bool:
    """Whether the run in `folder` ended: all epochs written, or stopped early by the loop."""
    if (folder / FINISHED_MARKER).is_file():
        return True
    history = folder / "history.jsonl"
    return (folder / "best.pt").is_file() and history.is_file() and len(read_jsonl(history)) >= config.epochs


def eval_config(experiment: Experiment, cell: Cell) -> EvalConfig:
    """The evaluation of a cell: the experiment's `attack` on the cell's data folder and device."""
    return EvalConfig(**experiment.attack, data_dir=cell.config.data.data_dir, device=cell.config.device)


def _source(folder: Path):
    from robeval.sources import load_source

    return load_source(folder, device="cpu")


def find_evaluation(experiment: Experiment, cell: Cell, root: Path,
                    store: ResultsStore) -> tuple[int | None, str | None]:
    """The cell's evaluation run in `store` and its status ('running' or 'finished'), if any."""
    from robeval.attacks import ThreatModel, parse_suite

    source = _source(run_dir(experiment, cell, root))
    config = eval_config(experiment, cell)
    plan = resolve(config, source)
    specs = [a.spec for a in parse_suite(plan.suite, ThreatModel(plan.eps, plan.norm))]
    run_id = store.find_run(run_key(source, plan, specs, str(config.batch_size)))
    if run_id is None:
        return None, None
    return run_id, str(store.runs().set_index("id").loc[run_id, "status"])


def cell_status(experiment: Experiment, cell: Cell, root: Path = Path(".")) -> str:
    """'done' (trained and evaluated), 'trained', 'partial' (training or evaluation started) or 'todo'."""
    folder = run_dir(experiment, cell, root)
    if not (folder / "config.yaml").is_file():
        return "todo"
    if not training_finished(folder, cell.config):
        return "partial"
    store_path = report_dir(experiment, root) / STORE_NAME
    if not store_path.is_file():
        return "trained"
    with ResultsStore(store_path) as store:
        _, status = find_evaluation(experiment, cell, root, store)
    return {"finished": "done", "running": "partial"}.get(status, "trained")


# --- running ------------------------------------------------------------------------------------

def _train_cell(experiment: Experiment, cell: Cell, root: Path, progress: bool, log) -> None:
    from robeval.train import train

    folder = run_dir(experiment, cell, root)
    result = train(cell.config, folder, resume=(folder / "config.yaml").is_file(), progress=progress, log=log)
    atomic_write_text(folder / FINISHED_MARKER, yaml.safe_dump(
        {"best_epoch": result.best_epoch, "stopped_early": result.stopped_early}))


def _headline(store: ResultsStore, run_id: int) -> tuple[float, float]:
    summary = store.summary(run_id)
    return float(summary.loc["clean", "accuracy"]), float(summary.loc["worst case", "accuracy"])


def run_cell(experiment: Experiment, cell: Cell, root: Path, store: ResultsStore, position: str,
             progress: bool, log) -> CellResult:
    """Train a cell unless its training finished, then evaluate it unless that finished."""
    from robeval.device import resolve_device
    from robeval.sources import load_source

    folder = run_dir(experiment, cell, root)
    trained = training_finished(folder, cell.config)
    if not trained:
        log(f"{position}: training")
        _train_cell(experiment, cell, root, progress, log)
    run_id, status = find_evaluation(experiment, cell, root, store)
    if status == "finished":
        log(f"{position}: {'done' if trained else 'evaluated'}")
    else:
        log(f"{position}: evaluating")
        source = load_source(folder, device=resolve_device(cell.config.device))
        run_id = evaluate(source, eval_config(experiment, cell), store, progress=progress, log=log).run_id
    return CellResult(cell, "done", run_id, *_headline(store, run_id))


def run_experiment(experiment: Experiment, root: Path = Path("."), dry_run: bool = False,
                   progress: bool = True, log: Callable[[str], None] = print) -> ExperimentResult:
    """Train, evaluate and report every cell of `experiment` under `root`, continuing earlier work.

    With `dry_run`, only the cells and their status are listed; nothing is written.
    """
    root = Path(root)
    todo = cells(experiment)
    if dry_run:
        rows = [CellResult(cell, cell_status(experiment, cell, root)) for cell in todo]
        log(cells_table(rows))
        return ExperimentResult(experiment, rows)
    store_path = report_dir(experiment, root) / STORE_NAME
    result = ExperimentResult(experiment, store=store_path)
    with ResultsStore(store_path) as store:
        for index, cell in enumerate(todo, 1):
            position = (f"cell {index}/{len(todo)} {cell.name} ({index - 1} done, "
                        f"{len(todo) - index} left)")
            result.cells.append(run_cell(experiment, cell, root, store, position, progress, log))
        result.report = write_report(experiment, result.cells, store, root)
    log(f"report: {result.report.get('md') or next(iter(result.report.values()))}")
    return result


# --- report -------------------------------------------------------------------------------------

def _baseline(experiment: Experiment, results: list[CellResult]) -> int | None:
    wanted = experiment.report.get("baseline", "first")
    if wanted in (None, "none"):
        return None
    if wanted == "first":
        return results[0].run_id
    for result in results:
        if result.cell.name == wanted:
            return result.run_id
    raise RobevalError(f"report baseline {wanted!r} of {experiment.name} is not a cell: "
                       f"{', '.join(r.cell.name for r in results)}")


def write_report(experiment: Experiment, results: list[CellResult], store: ResultsStore,
                 root: Path) -> dict[str, Path]:
    """build_report over the experiment's runs, with the study's own tables: one per grid group,
    the published numbers beside ours and a verdict per finding."""
    from robeval.report.build import FORMATS, ReportConfig, build_report

    report = experiment.report
    formats = report.get("formats", FORMATS)
    measured = measurements(results, store)
    extra = _group_tables(experiment, results, store) + study_tables(experiment, measured)
    config = ReportConfig(out=str(report_dir(experiment, root) / "report"),
                          runs=tuple(r.run_id for r in results), baseline=_baseline(experiment, results),
                          formats=tuple(formats.split(",") if isinstance(formats, str) else formats),
                          ci=bool(report.get("ci", False)),
                          title=str(report.get("title") or f"{experiment.name}: {experiment.description}"),
                          extra_tables=tuple(extra))
    paths = build_report(store, config)
    section = paper_section(experiment)
    if "md" in paths and section:
        markdown = Path(paths["md"])
        atomic_write_text(markdown, markdown.read_text().rstrip("\n") + "\n\n" + section + "\n")
    return paths


def _group_tables(experiment: Experiment, results: list[CellResult], store: ResultsStore) -> list:
    """A Bag-of-Tricks table per single-key grid group, when the grid has several groups."""
    if len(experiment.grid) < 2:
        return []
    from robeval.report import tables
    from robeval.report.collect import collect

    by_config = {_config_key(r.cell): r.run_id for r in results if r.run_id is not None}
    built = []
    for group, group_cells in zip(experiment.grid, grid_groups(experiment), strict=True):
        if len(group) != 1:
            continue
        trick = next(iter(group)).rpartition(".")[2]
        ids = list(dict.fromkeys(by_config[key] for key in map(_config_key, group_cells) if key in by_config))
        try:
            table = tables.tricks_table(collect(store, ids), trick)
        except RobevalError:
            continue
        table.title = f"One setting at a time: {trick}"
        built.append(table)
    return built


# --- published numbers and findings ----------------------------------------------------------------

Measurements = dict[str, dict[int, dict[str, Any]]]   # setting -> seed -> metric -> per-image flags


def measured_flags(store: ResultsStore, run_id: int) -> dict[str, Any]:
    """Per-image 0/1 flags by test-image index: clean, each attack, 'worst case' (alias 'robust')."""
    import pandas as pd

    from robeval.check import metric_flags

    index = store.per_sample(run_id)["index"].to_numpy()
    flags = {metric: pd.Series(values, index=index, dtype=bool)
             for metric, values in metric_flags(store, run_id).items()}
    flags["robust"] = flags["worst case"]
    return flags


def measurements(results: list[CellResult], store: ResultsStore) -> Measurements:
    """The finished evaluations of `results`, by setting and seed."""
    measured: Measurements = {}
    for result in results:
        if result.run_id is not None:
            flags = measured_flags(store, result.run_id)
            measured.setdefault(setting_key(result.cell), {})[result.cell.seed] = flags
    return measured


def finding_rows(experiment: Experiment, measured: Measurements) -> list[dict]:
    """Per finding: claim, cells, metric, the paper's difference and ours (`robeval.findings.Measured`)."""
    from robeval.findings import measure, paper_delta

    published = published_values(experiment)
    rows = []
    for finding in experiment.findings:
        better = spec_setting(experiment, finding.better, "finding")
        worse = spec_setting(experiment, finding.worse, "finding")
        flags = []
        for key in (better, worse):
            per_seed = {}
            for seed, metrics in measured.get(key, {}).items():
                if finding.metric not in metrics:
                    raise RobevalError(f"finding {finding.claim!r} of {experiment.name} uses metric "
                                       f"{finding.metric!r}; the evaluations give {', '.join(metrics)}")
                per_seed[seed] = metrics[finding.metric]
            flags.append(per_seed)
        rows.append({"finding": finding, "paper_delta": paper_delta(finding, published, better, worse),
                     "measured": measure(finding, *flags)})
    return rows


def published_rows(experiment: Experiment, measured: Measurements) -> list[dict]:
    """Per published row: its label, the paper's values (absolute) and ours (accuracy per seed)."""
    published = published_values(experiment)
    rows = []
    for row in (experiment.paper or {}).get("rows") or []:
        key = spec_setting(experiment, row["cell"], "paper row")
        ours: dict[str, list[float]] = {}
        for metrics in measured.get(key, {}).values():
            for metric, flags in metrics.items():
                if metric != "robust":
                    ours.setdefault(metric, []).append(float(flags.mean()))
        rows.append({"label": spec_label(row["cell"]), "paper": published[key], "ours": ours,
                     "seeds": sorted(measured.get(key, {}))})
    return rows


def study_tables(experiment: Experiment, measured: Measurements) -> list:
    """The published numbers beside ours, and the verdict per finding, as report tables."""
    from robeval.report import tables

    paper = experiment.paper or {}
    built = []
    if paper.get("rows"):
        notes = f"Source: {paper.get('source', 'not given')}."
        if paper.get("note"):
            notes += f" What differs: {paper['note']}"
        built.append(tables.published_table(published_rows(experiment, measured), notes))
    if experiment.findings:
        built.append(tables.findings_table(finding_rows(experiment, measured)))
    return built


def paper_section(experiment: Experiment) -> str:
    """Markdown for a paper block that lists no rows: its source and note ('' otherwise)."""
    paper = experiment.paper
    if not paper or paper.get("rows"):
        return ""
    lines = ["## Published numbers beside ours", "", f"Source: {paper.get('source', 'not given')}.", "",
             "No published figures are listed for these cells: compare the direction of "
             "the changes with the source."]
    if paper.get("note"):
        lines += ["", f"What differs: {paper['note']}"]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def cells_table(results: list[CellResult]) -> str:
    """Fixed-width table: cell, status, clean and worst-case accuracy (%)."""
    rows = [("cell", "status", "clean", "worst case")]
    rows += [(r.cell.name, r.status, _pct(r.clean), _pct(r.worst_case)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
