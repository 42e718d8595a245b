"""docs/reproduction.md: the papers' numbers, ours and a verdict per finding, from the results stores.

    python -m robeval.reproduction --root . --data-dir ../shared/data/cifar10-mini --out docs/reproduction.md

reads every `-mini` study file (or the studies named), finds each cell's finished training and
evaluation under `--root` (checkpoints/<study>/<cell> and reports/<study>/robeval.sqlite, as
`robeval run` writes them), adds them to the study's record (docs/reproduction/records/<study>.jsonl,
experiments.record: what the page needs of each finished cell, kept with the repository), and
writes one Markdown file from the records: per study, what differs from the paper, which cells
and seeds are missing, the published rows beside ours and the findings with their verdicts
(rule: robeval.findings). A cell whose training or evaluation has not finished contributes no
number; nor does a record entry of another protocol. Figures of per-epoch gradient diagnostics
are written next to the file for studies whose runs record them. Nothing is trained or
evaluated unless `--run` is given: then each study's missing cells (neither finished under
`--root` nor in its record) are trained and evaluated first, as `robeval run` does (resumable
cell by cell, with progress and the time left), so one command does the whole reproduction,
and a reproduction stopped on one machine continues on another from the committed records;
`--jobs N` runs N studies at a time, each in its own one-thread process (on a CPU, use the
number of cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import robeval
from robeval import experiments as ex
from robeval.checkpoints import atomic_write_text
from robeval.errors import RobevalError
from robeval.experiments.parallel import run_in_parallel
from robeval.findings import VERDICTS
from robeval.results import ResultsStore

EXCLUDED = ("regress-mini",)


def mini_studies() -> list[Path]:
    """The shipped `-mini` study files (the regression check's file excluded)."""
    folder = Path(robeval.__file__).resolve().parents[1] / "experiments"
    return [p for p in sorted(folder.glob("*-mini.yaml")) if p.stem not in EXCLUDED]


def finished_cells(experiment: ex.Experiment, root: Path) -> tuple[list[ex.CellResult], list[str]]:
    """Cells whose training and evaluation finished (with their run ids), and the others' names."""
    store_path = ex.report_dir(experiment, root) / ex.STORE_NAME
    done, missing = [], []
    store = ResultsStore(store_path) if store_path.is_file() else None
    try:
        for cell in ex.cells(experiment):
            folder = ex.run_dir(experiment, cell, root)
            run_id, status = None, None
            if store is not None and ex.training_finished(folder, cell.config):
                run_id, status = ex.find_evaluation(experiment, cell, root, store)
            if status == "finished":
                done.append(ex.CellResult(cell, "done", run_id))
            else:
                missing.append(f"{cell.name} ({ex.cell_status(experiment, cell, root)})")
    finally:
        if store is not None:
            store.close()
    return done, missing


def _figure(experiment: ex.Experiment, entries: dict[str, ex.CellRecord], out: Path) -> str:
    """The per-epoch R(x, δ) and ‖∇ₓL‖₁ figure of the study's runs, if they record diagnostics."""
    from robeval.report import figures

    activations = {cell.name: cell.config.model.activation for cell in ex.cells(experiment)}
    histories = {name: (activations[name], entry.history) for name, entry in entries.items()}
    try:
        figure = figures.gradient_quality_curves(histories)
    except RobevalError:
        return ""
    name = f"{experiment.name}-gradient-quality.png"
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / name, dpi=120, metadata={"Software": None})
    lines = [f"![R(x, δ_FGSM), ‖∇ₓL‖₁ and FGSM and PGD-10 accuracy per epoch]({out.name}/{name})", "",
             "*Linearisation error R(x, δ_FGSM), input-gradient norm ‖∇ₓL‖₁ and FGSM and PGD-10 "
             "accuracy per epoch on a fixed batch of training images, one line per finished run; a "
             "cross marks an epoch flagged as catastrophic overfitting.*", "",
             "| run | epochs | R first → last | ‖∇ₓL‖₁ first → last | "
             "PGD-10 acc. on the batch, best → last | flagged |", "|:--|--:|--:|--:|--:|:--|"]
    for label, (_, rows) in histories.items():
        if not rows or "diag_R_fgsm_mean" not in rows[0]:
            continue
        pgd = [row["diag_pgd10_acc"] for row in rows]
        flagged = [str(row["epoch"]) for row in rows if row.get("collapse")]
        first, last = rows[0], rows[-1]
        r_first, r_last = first["diag_R_fgsm_mean"], last["diag_R_fgsm_mean"]
        lines.append(f"| {label} | {len(rows)} | {r_first:.4f} → {r_last:.4f} | "
                     f"{first['diag_grad_l1_mean']:.2f} → {last['diag_grad_l1_mean']:.2f} | "
                     f"{100 * max(pgd):.1f} → {100 * pgd[-1]:.1f} | {', '.join(flagged) or 'no'} |")
    return "\n".join(lines)


def update_record(experiment: ex.Experiment, root: Path,
                  records: Path) -> tuple[dict[str, ex.CellRecord], int]:
    """The study's record in `records` with the cells finished under `root` added (a local run
    replaces the entry of the same cell), written back; and how many stale entries (another
    protocol) it dropped."""
    path = ex.record_path(experiment, records)
    entries, stale = ex.read_record(experiment, path)
    local, _ = finished_cells(experiment, root)
    if local:
        with ResultsStore(ex.report_dir(experiment, root) / ex.STORE_NAME) as store:
            entries.update({r.cell.name: ex.cell_record(experiment, r, root, store) for r in local})
    if entries or path.is_file():
        ex.write_record(experiment, path, entries)
    return entries, stale


class StudySection(NamedTuple):
    """One study's part of the document and the counts the head sums."""

    text: str
    verdicts: list[str]
    finished: int   # cells trained and evaluated
    cells: int
    seconds: float  # training (its own, not reused) and evaluation of the finished cells
    reused: int     # finished cells that reused another study's training


def study_section(path: Path, root: Path, data_dir: str | None, figures_dir: Path,
                  records: Path | None = None) -> StudySection:
    """One study's Markdown, the verdicts of its findings, its finished and all cells, the seconds
    its finished runs took and how many of them reused another study's training. The numbers
    come from the study's record in `records` (default: `figures_dir`/records), first brought up
    to date with the cells finished under `root`."""
    from robeval.report import tables

    experiment = ex.load_experiment(path, data_dir=data_dir)
    entries, stale = update_record(experiment, root, records or figures_dir / "records")
    missing = [f"{cell.name} ({ex.cell_status(experiment, cell, root)})"
               for cell in ex.cells(experiment) if cell.name not in entries]
    seeds = sorted({entry.seed for entry in entries.values()})
    paper = experiment.paper or {}
    seconds = sum(entry.training_seconds for entry in entries.values())
    evaluation = sum(entry.evaluation_seconds for entry in entries.values())
    reused = sum(entry.reused_from is not None for entry in entries.values())
    measured = ex.record_measurements(experiment, entries)
    verdicts = []
    lines = [f"## {experiment.name}", "", experiment.description, "",
             f"- **source**: {' '.join(str(paper.get('source', 'not given')).split())}",
             f"- **what differs**: {' '.join(str(paper.get('note', '')).split())}",
             f"- **cells finished**: {len(entries)} of {len(entries) + len(missing)} "
             f"(seeds {', '.join(map(str, seeds)) or 'none'}); training {seconds:.0f} s and "
             f"evaluation {evaluation:.0f} s, summed over the finished runs (wall clock)"
             + (f"; {reused} of them reused the training of another study's identical run "
                "(same settings, seed and data), counted there" if reused else "")]
    if missing:
        lines.append(f"- **missing** (no number shown for these): {'; '.join(missing)}")
    if stale:
        lines.append(f"- **dropped**: {stale} entries of the record ran under another protocol "
                     "(settings or attacks since changed); their cells count as missing")
    lines.append("")
    for table in ex.study_tables(experiment, measured):
        lines += [f"### {table.title}", "", tables.to_markdown(table), "", f"*{table.notes}*", ""]
    if experiment.findings:
        verdicts = [row["measured"].verdict for row in ex.finding_rows(experiment, measured)]
    figure = _figure(experiment, entries, figures_dir) if entries else ""
    if figure:
        lines += ["### Gradient quality per epoch", "", figure, ""]
    return StudySection("\n".join(lines), verdicts, len(entries), len(entries) + len(missing),
                        seconds + evaluation, reused)


def build(paths: list[Path], root: Path, data_dir: str | None, out: Path, command: str) -> str:
    """The whole document (also written to `out`)."""
    parts = [study_section(path, root, data_dir, out.parent / out.stem) for path in paths]
    sections = [part.text for part in parts]
    verdicts = [verdict for part in parts for verdict in part.verdicts]
    finished, total = sum(part.finished for part in parts), sum(part.cells for part in parts)
    spent, reused = sum(part.seconds for part in parts), sum(part.reused for part in parts)
    counts = {v: verdicts.count(v) for v in VERDICTS}
    head = ["# Reproduction at mini scale", "",
            f"Generated by `{command}` from the study records in {out.stem}/records/ (one line "
            "per finished cell: its per-image flags, training history and seconds, tied to the "
            "protocol it ran under; brought up to date from the results stores first); do not "
            "edit by hand.", "",
            "Each `-mini` study trains small CNNs on cifar10-mini (the first 5085 CIFAR-10 training "
            "images, evaluated on the first test images) on a CPU, so the levels are far below the "
            "papers'; what can carry over is the direction of each finding and, roughly, its size. "
            "Each finding compares two cells: ours is the mean over seeds of the per-seed difference, "
            "with a 95% interval from the seed spread and the paired per-image differences. For a "
            "claim that one cell beats the other, with published difference P, the verdict is "
            "*contradicted* when the interval lies below 0, *smaller than published at this scale* "
            "when P > 0 and the interval lies below P/2, *reproduced* when it lies above 0, else "
            "*inconclusive at this scale*; for a claim of no change it is *reproduced* when the "
            "interval lies inside the stated margin, *contradicted* when it lies wholly outside it. "
            "Each verdict is a one-sided decision read off the two-sided 95% interval: when the true "
            "difference sits on the boundary the verdict crosses (0, P/2 or the margin) it is wrong "
            "at most 2.5% of the time. See robeval/findings.py.", "",
            "Protocol, fixed before the runs (docs/design.md, *Reproduction protocol at mini scale*, "
            "gives the reasons and the cost): every study trains on all training images but a 500-image "
            "validation split and evaluates the first 500 test images with the paper's own attack "
            "(PGD-200 for SAT, PGD-50 for the smoothness study, PGD-10 for Bag of Tricks), plus aa-fast "
            "where a finding reads AutoAttack, over at least five seeds: per study the count that the "
            "spread measured in an earlier complete run asks for every finding's interval to be at most "
            "±2.5 points (each study's file gives its count and why). The PGD-1 studies train at most 10 "
            "epochs with early stopping on validation PGD accuracy (patience 3) and evaluate the best "
            "epoch; the smoothness studies train a fixed budget and evaluate the last epoch, since "
            "catastrophic overfitting is about where training ends, and Figure 1's study trains 30 epochs"
            " of FGSM without random start at eps 16/255, a regime chosen so that ReLU can overfit "
            "catastrophically at this scale. The epoch budgets and that regime were checked against the "
            "measured learning curves (docs/design.md, *Epoch budget*). A cell whose settings, seed and "
            "data folder equal a finished run of another study reuses that run's training and is "
            "evaluated under its own study's attacks. docs/design.md (*Measured cost*) gives what the "
            "whole reproduction costs. Runs of an earlier protocol share the cells' folder names and must"
            " be removed before a study is run under this one.", "",
            "The runs come from `robeval run <study> --data-dir <cifar10-mini folder>` for each study "
            "below, or from the command above with `--run`, which runs every study's missing cells "
            "before writing this file; both continue where they stopped, so running again fills the "
            "missing cells and seeds.", "",
            f"Runs finished (trained and evaluated): {finished} of {total}, of which {reused} "
            "reused the training of another study's identical run; each study lists the ones "
            f"missing. Their training and evaluation took {spent / 3600:.1f} h summed (wall clock of each "
            "run, whatever else the machine was running, the time it lay stopped left out; a "
            "reused training counted once); two at a time (`--jobs 2`) on a 2-core machine they "
            "take about half that elapsed (docs/design.md, *Cost of the rerun*, has the measured "
            "figures).", "",
            f"Findings: {len(verdicts)}; " + ", ".join(f"{v}: {n}" for v, n in counts.items()) + ".", ""]
    text = "\n".join(head + sections).rstrip("\n") + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return text


def run_studies(paths: list[Path], root: Path, data_dir: str | None, progress: bool = True,
                jobs: int = 1, records: Path | None = None) -> None:
    """Train and evaluate every study's missing cells under `root` (`robeval run` on each:
    finished cells are kept, an interrupted one resumes, and the cells the study's record in
    `records` holds are skipped): one study after the other, or with `jobs` > 1 that many
    studies at a time (experiments.parallel)."""
    if jobs > 1:
        studies = [(ex.load_experiment(path, data_dir=data_dir), path) for path in paths]
        run_in_parallel(studies, root, data_dir, jobs, records)
        return
    for index, path in enumerate(paths, 1):
        experiment = ex.load_experiment(path, data_dir=data_dir)
        print(f"study {index}/{len(paths)}: {experiment.name}", flush=True)
        ex.run_experiment(experiment, root, progress=progress, log=print,
                          recorded=ex.recorded_cells(experiment, records))


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m robeval.reproduction",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="*", help="study files or names (default: every -mini study)")
    parser.add_argument("--root", default=".", help="folder holding checkpoints/ and reports/")
    parser.add_argument("--data-dir", default=None, help="the data folder the runs were given")
    parser.add_argument("--out", default="docs/reproduction.md")
    parser.add_argument("--run", action="store_true",
                        help="first train and evaluate what each study is missing (as robeval run "
                             "does: resumable, cell by cell), then write the document")
    parser.add_argument("--quiet", action="store_true", help="with --run: no progress bars")
    parser.add_argument("--jobs", type=int, default=1,
                        help="with --run: studies run at a time, each in its own process with "
                             "one thread (use the number of cores; progress bars are off)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give at least 1 (the number of cores, say)")
    paths = [ex.find_experiment(s) for s in args.studies] or mini_studies()
    options = ([f"--root {args.root}"] if args.root != "." else []) + (
        [f"--data-dir {args.data_dir}"] if args.data_dir else []) + [f"--out {args.out}"]
    command = "python -m robeval.reproduction " + " ".join(options + list(args.studies))
    try:
        if args.run:
            out = Path(args.out)
            run_studies(paths, Path(args.root), args.data_dir, progress=not args.quiet,
                        jobs=args.jobs, records=out.parent / out.stem / "records")
        build(paths, Path(args.root), args.data_dir, Path(args.out), command)
    except RobevalError as err:
        print(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run the same command again to continue")
        return 130
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
