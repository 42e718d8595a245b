"""The cells of an experiment: its grid expanded into training runs, their names, settings and folders."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from robeval.errors import RobevalError
from robeval.train.config import TrainConfig, config_to_dict, merge, resolve_config

if TYPE_CHECKING:   # for annotations only: spec.py imports this module
    from robeval.experiments.spec import Experiment


@dataclass(frozen=True)
class Cell:
    """One training run of an experiment: its grid values, seed and resolved configuration."""

    name: str
    overrides: dict
    seed: int
    config: TrainConfig


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


def config_key(cell: Cell) -> str:
    """A cell's whole training configuration as text: cells that share it are one training run."""
    return json.dumps(config_to_dict(cell.config), sort_keys=True)


def cells(experiment: Experiment) -> list[Cell]:
    """Every distinct training run: the grid product × seeds (the first name of a duplicate wins)."""
    seen: dict[str, Cell] = {}
    names: dict[str, Cell] = {}
    for cell in itertools.chain.from_iterable(grid_groups(experiment)):
        key = config_key(cell)
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


# --- folders ------------------------------------------------------------------------------------

def run_dir(experiment: Experiment, cell: Cell, root: Path = Path(".")) -> Path:
    """The training run folder of a cell."""
    return Path(root) / "checkpoints" / experiment.name / cell.name


def report_dir(experiment: Experiment, root: Path = Path(".")) -> Path:
    """The folder holding the experiment's results store and report."""
    return Path(root) / "reports" / experiment.name
