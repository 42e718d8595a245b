"""Running an experiment: training and evaluating its cells, continuing earlier work, and their status."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path

import yaml

from robeval.attacks import ThreatModel, parse_suite
from robeval.checkpoints import atomic_write_text, read_jsonl
from robeval.device import resolve_device
from robeval.errors import RobevalError
from robeval.evaluate import EvalConfig, evaluate, resolve, run_key
from robeval.experiments.grid import Cell, cells, report_dir, run_dir
from robeval.experiments.report import cells_table, write_report
from robeval.experiments.spec import CellResult, Experiment, ExperimentResult
from robeval.results import ResultsStore
from robeval.sources import load_source
from robeval.train import train
from robeval.train.config import TrainConfig
from robeval.train.loop import holds_run_of
from robeval.yamlfile import read_yaml

FINISHED_MARKER = "finished.json"
STORE_NAME = "robeval.sqlite"
STATUSES = ("done", "trained", "partial", "todo", "recorded")


# --- status -------------------------------------------------------------------------------------

def training_finished(folder: Path, config: TrainConfig) -> bool:
    """Whether the run in `folder` ended: all epochs written, or stopped early by the loop. A
    folder trained under other settings has not (training it then refuses the folder)."""
    if not holds_run_of(folder, config):
        return False
    if (folder / FINISHED_MARKER).is_file():
        return True
    history = folder / "history.jsonl"
    return (folder / "best.pt").is_file() and history.is_file() and len(read_jsonl(history)) >= config.epochs


def eval_config(experiment: Experiment, cell: Cell) -> EvalConfig:
    """The evaluation of a cell: the experiment's `attack` on the cell's data folder and device."""
    return EvalConfig(**experiment.attack, data_dir=cell.config.data.data_dir, device=cell.config.device)


def evaluated_model(experiment: Experiment, cell: Cell, root: Path = Path(".")) -> Path:
    """What a cell's evaluation loads: its run folder (best.pt) or, with `checkpoint: last`, last.pt."""
    folder = run_dir(experiment, cell, root)
    return folder / "last.pt" if experiment.checkpoint == "last" else folder


def find_evaluation(experiment: Experiment, cell: Cell, root: Path,
                    store: ResultsStore) -> tuple[int | None, str | None]:
    """The cell's evaluation run in `store` and its status ('running' or 'finished'), if any."""
    source = load_source(evaluated_model(experiment, cell, root), device="cpu")
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


def cells_done(experiment: Experiment, root: Path = Path("."), recorded: Collection[str] = ()) -> int:
    """How many of the study's cells are trained and evaluated under `root` or named in
    `recorded` (held by a reproduction record)."""
    return sum(cell.name in recorded or cell_status(experiment, cell, root) == "done"
               for cell in cells(experiment))


# --- running ------------------------------------------------------------------------------------

def trained_twin(experiment: Experiment, cell: Cell, root: Path = Path(".")) -> Path | None:
    """Another study's finished run folder under `root` that trained exactly this cell's
    configuration (every setting, the seed and the data folder), or None.

    Training is deterministic on a CPU, so such a run is the model this cell would train; the
    study that shares a baseline with another evaluates it under its own attacks instead of
    training it again.
    """
    own = run_dir(experiment, cell, root)
    for folder in sorted(Path(root, "checkpoints").glob(f"*/*seed={cell.seed}")):
        if folder != own and (folder / FINISHED_MARKER).is_file() and holds_run_of(folder, cell.config):
            return folder
    return None


def _finished_marker(folder: Path) -> dict:
    """The run folder's finished marker ({} when there is none); an unreadable one is a one-line
    error."""
    marker = folder / FINISHED_MARKER
    if not marker.is_file():
        return {}
    values = read_yaml(marker, "run marker") or {}
    if not isinstance(values, dict):
        raise RobevalError(f"run marker {marker} is not a mapping: remove {folder} to train the "
                           "run again")
    return values


def reused_from(folder: Path) -> str | None:
    """The run folder whose training the run in `folder` reused (None: it trained itself)."""
    return _finished_marker(folder).get("trained_in")


def _reuse_training(twin: Path, folder: Path, origin: str) -> None:
    """Copy `twin`'s finished run into `folder` (which must not exist yet) in one rename,
    recording `origin`, the run folder that trained it."""
    marker = {**_finished_marker(twin), "trained_in": origin}
    staging = folder.with_name(f".{folder.name}.copy-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(twin, staging)
    atomic_write_text(staging / FINISHED_MARKER, yaml.safe_dump(marker))
    os.replace(staging, folder)


def _train_cell(experiment: Experiment, cell: Cell, root: Path, progress: bool, log) -> None:
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
    folder = run_dir(experiment, cell, root)
    trained = training_finished(folder, cell.config)
    twin = None if trained or (folder / "config.yaml").exists() else trained_twin(experiment, cell, root)
    if twin is not None:
        origin = reused_from(twin) or twin.relative_to(Path(root, "checkpoints")).as_posix()
        log(f"{position}: training reused from {origin}")
        _reuse_training(twin, folder, origin)
    elif not trained:
        log(f"{position}: training")
        _train_cell(experiment, cell, root, progress, log)
    run_id, status = find_evaluation(experiment, cell, root, store)
    if status == "finished":
        log(f"{position}: {'done' if trained else 'evaluated'}")
    else:
        log(f"{position}: evaluating")
        source = load_source(evaluated_model(experiment, cell, root),
                             device=resolve_device(cell.config.device))
        run_id = evaluate(source, eval_config(experiment, cell), store, progress=progress, log=log).run_id
    return CellResult(cell, "done", run_id, *_headline(store, run_id))


def time_left(worked: list[float], cells_left: int) -> str:
    """`, about N min to go` from the mean time of the cells that had work so far (none yet: '')."""
    if not worked:
        return ""
    minutes = sum(worked) / len(worked) * cells_left / 60
    return f", about {minutes:.0f} min to go" if minutes >= 1 else ", under a minute to go"


def run_order(experiment: Experiment, todo: list[Cell]) -> list[Cell]:
    """The cells seed by seed: a study stopped partway has every setting at the same seeds, so
    its paired comparisons use all the runs that finished."""
    rank = {seed: index for index, seed in enumerate(experiment.seeds)}
    return sorted(todo, key=lambda cell: rank.get(cell.seed, len(rank)))


def run_experiment(experiment: Experiment, root: Path = Path("."), dry_run: bool = False,
                   progress: bool = True, log: Callable[[str], None] = print,
                   recorded: Collection[str] = ()) -> ExperimentResult:
    """Train, evaluate and report every cell of `experiment` under `root`, continuing earlier work.

    Cells named in `recorded` (held by a reproduction record, experiments.record) are neither
    run nor reported here. With `dry_run`, only the cells and their status are listed; nothing
    is written.
    """
    root = Path(root)
    todo = cells(experiment)
    if dry_run:
        rows = [CellResult(cell, "recorded" if cell.name in recorded else cell_status(experiment, cell, root))
                for cell in todo]
        log(cells_table(rows))
        return ExperimentResult(experiment, rows)
    store_path = report_dir(experiment, root) / STORE_NAME
    result = ExperimentResult(experiment, store=store_path)
    worked: list[float] = []   # seconds of each cell that had training or evaluation to do
    finished: dict[str, CellResult] = {}
    order = run_order(experiment, todo)
    # Cells done before this run count as done from the start, so a resumed study's position
    # and time left speak of the cells that still have work, wherever they sit in the order.
    waiting = {cell.name for cell in order
               if cell.name not in recorded and cell_status(experiment, cell, root) != "done"}
    with ResultsStore(store_path) as store:
        for index, cell in enumerate(order, 1):
            needs_work = cell.name in waiting
            left = len(waiting) - needs_work
            position = (f"cell {index}/{len(todo)} {cell.name} ({len(todo) - len(waiting)} done, "
                        f"{left} left{time_left(worked, len(waiting))})")
            if cell.name in recorded:
                log(f"{position}: in the record, not run")
                finished[cell.name] = CellResult(cell, "recorded")
                continue
            started = time.perf_counter()
            finished[cell.name] = run_cell(experiment, cell, root, store, position, progress, log)
            if needs_work:
                worked.append(time.perf_counter() - started)
                waiting.discard(cell.name)
        result.cells = [finished[cell.name] for cell in todo]
        ran = [r for r in result.cells if r.run_id is not None]
        result.report = write_report(experiment, ran, store, root) if ran else {}
    if result.report:
        log(f"report: {result.report.get('md') or next(iter(result.report.values()))}")
    else:
        log("report: none written here (every cell is in the record)")
    return result
