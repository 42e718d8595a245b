"""Several studies side by side: `robeval run` on each in a child process of one thread.

On a CPU, studies side by side use the cores better than one study's threads do (a small
network's convolutions scale poorly across threads), and a study stays resumable cell by cell
because each child is a plain `robeval run`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from robeval.errors import RobevalError
from robeval.experiments.grid import cells
from robeval.experiments.record import recorded_cells
from robeval.experiments.run import cells_done
from robeval.experiments.spec import Experiment

# The position `robeval run` logs before each cell (experiments.run.run_experiment).
CELL_LINE = re.compile(r"cell (?P<index>\d+)/(?P<total>\d+) \S+ \((?P<done>\d+) done, "
                       r"(?P<left>\d+) left(?:, about (?P<minutes>\d+) min to go)?")


def study_weight(experiment: Experiment) -> int:
    """A study's size for scheduling: the epochs its cells may train, summed."""
    return sum(cell.config.epochs for cell in cells(experiment))


@dataclass
class Overall:
    """Cells reached across the studies and the time left, from what each study reports.

    A study's own estimate (mean time of its cells that had work, times its cells left) gives
    its seconds per cell; waiting studies are costed at the mean of those seen so far, and the
    total is shared among the jobs: a rough figure, labelled as one.
    """

    totals: dict[str, int]
    jobs: int
    reached: dict[str, int] = field(default_factory=dict)
    per_cell: dict[str, float] = field(default_factory=dict)   # seconds, latest estimate
    finished: set[str] = field(default_factory=set)

    def saw(self, study: str, line: str) -> bool:
        """Take a study's output line; True when it was a cell's position."""
        match = CELL_LINE.match(line)
        if match is None:
            return False
        self.reached[study] = int(match["done"])
        if match["minutes"] is not None:
            self.per_cell[study] = 60 * int(match["minutes"]) / (int(match["left"]) + 1)
        return True

    def finish(self, study: str, completed: bool) -> None:
        """A study whose child ended: all its cells done, or it stopped (nothing more will run)."""
        self.finished.add(study)
        if completed:
            self.reached[study] = self.totals[study]

    def line(self) -> str:
        """`N of M cells done, about H h to go` (no estimate before any cell had work)."""
        done, total = sum(self.reached.values()), sum(self.totals.values())
        text = f"{done} of {total} cells done"
        if not self.per_cell:
            return text
        mean = sum(self.per_cell.values()) / len(self.per_cell)
        left = sum((self.totals[s] - self.reached.get(s, 0)) * self.per_cell.get(s, mean)
                   for s in self.totals if s not in self.finished)
        return f"{text}, about {left / self.jobs / 3600:.1f} h to go"


def _echo_lines(name: str, stream, overall: Overall, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            print(f"[{name}] {line}", end="", flush=True)
            before = sum(overall.reached.values())
            if overall.saw(name, line):
                done = sum(overall.reached.values())
                if done != before and done % 10 == 0:   # every tenth cell, once
                    print(f"overall: {overall.line()}", flush=True)


def _start_study(path: Path, name: str, root: Path, data_dir: str | None, records: Path | None,
                 overall: Overall, lock: threading.Lock):
    command = [sys.executable, "-m", "robeval", "run", str(path), "--root", str(root), "--quiet"]
    command += ["--data-dir", data_dir] if data_dir else []
    command += ["--records", str(records)] if records else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    echo = threading.Thread(target=_echo_lines, args=(name, process.stdout, overall, lock),
                            daemon=True)
    echo.start()
    return process, echo


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_in_parallel(studies: list[tuple[Experiment, Path]], root: Path, data_dir: str | None,
                    jobs: int, records: Path | None = None) -> None:
    """`robeval run` on every (study, its file), `jobs` at a time, the largest first; each
    output line is prefixed with its study's name, and an overall line gives the cells done
    and the time left. With `records` (a folder of reproduction records), the cells a study's
    record holds count as done and are not run.

    A cell that another study shares (same settings, seed and data) reuses that study's
    training when it finished first; two studies that reach the same cell at once both train
    it, which costs time but not correctness. A study that fails leaves the others running;
    the error names it, and running again continues where each stopped.
    """
    queue = sorted(studies, key=lambda pair: study_weight(pair[0]), reverse=True)
    overall = Overall({e.name: len(cells(e)) for e, _ in studies}, jobs,
                      reached={e.name: cells_done(e, root, recorded_cells(e, records))
                               for e, _ in studies})
    print(f"overall: {overall.line()}", flush=True)
    lock = threading.Lock()
    running: dict[str, tuple] = {}
    failed: list[str] = []
    # A terminated parent stops its studies too (else they run on until their output pipe breaks).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                experiment, path = queue.pop(0)
                with lock:
                    print(f"study {experiment.name}: started ({len(queue)} waiting)", flush=True)
                running[experiment.name] = _start_study(path, experiment.name, root, data_dir,
                                                        records, overall, lock)
            time.sleep(0.2)
            for name, (process, echo) in list(running.items()):
                if process.poll() is None:
                    continue
                echo.join()
                del running[name]
                overall.finish(name, completed=process.returncode == 0)
                if process.returncode != 0:
                    failed.append(name)
                with lock:
                    print(f"study {name}: {'finished' if process.returncode == 0 else 'stopped'}; "
                          f"overall: {overall.line()}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process, _ in running.values():
            process.terminate()
            process.wait()
    if failed:
        raise RobevalError(f"{', '.join(failed)} stopped before finishing (its lines above say "
                           "why): fix that and run again to continue where it stopped")
