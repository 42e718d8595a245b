"""Command line: parse, call one library function, print. No logic of its own."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from robeval.allocator import tune_cpu_allocator
from robeval.errors import PeerError, RobevalError, first_line
from robeval.spec import parse_eps


class ListedOption(click.Option):
    """An option whose help lists the names of a vocabulary, read only when the help is shown.

    The registries live in modules that import torch; reading them when this module loads would
    slow down every command, `robeval --help` included.
    """

    def __init__(self, *args, listed: Callable[[], str], **kwargs):
        super().__init__(*args, **kwargs)
        self.listed = listed

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self.listed()
        return super().get_help_record(ctx)


def listing(module: str, vocabulary: str, template: str = "{}", sep: str = ", ") -> Callable[[], str]:
    """Help text: `template` filled with the names in `module.vocabulary` (a registry, tuple or dict)."""
    return lambda: template.format(sep.join(getattr(importlib.import_module(module), vocabulary)))


MODE_NOTES = {"cascade": "attack only still-robust points"}


def mode_help() -> str:
    """The evaluation modes of the results store, with what the default one does."""
    from robeval.results import MODES

    return " or ".join(f"{mode} ({MODE_NOTES[mode]})" if mode in MODE_NOTES else mode
                       for mode in MODES)


NORM_HELP = listing("robeval.attacks", "NORMS", "{} (default: the model's)", " or ")

# (option, config section or None for top level, field, type, help: text or a `listing`)
TRAIN_OPTIONS = [
    ("--dataset", "data", "dataset", str, "digits (embedded), cifar10, cifar100, imagenet"),
    ("--data-dir", "data", "data_dir", str, "folder with the official dataset files"),
    ("--train-subset", "data", "train_subset", int, "use only the first N training images"),
    ("--test-subset", "data", "test_subset", int, "use only the first N test images"),
    ("--val-size", "data", "val_size", int, "images carved from the training set for validation"),
    ("--split-seed", "data", "split_seed", int, "seed of the train/validation split"),
    ("--augment/--no-augment", "data", "augment", None, "random crop and flip"),
    ("--model", "model", "arch", str, "cnn-small, preact-resnet18, resnet18, wrn-D-W, resnet50, ..."),
    ("--activation", "model", "activation", str, "relu, softplus, silu, gelu, elu(alpha=2), ..."),
    ("--smooth-grad", "model", "smooth_grad", str,
     listing("robeval.activations", "SMOOTH_GRAD_MODES", "ReLU nets: smooth backward for {} "
             "(SAT Table 1)", "|")),
    ("--method", "adversary", "method", str, listing("robeval.train.methods", "METHODS")),
    ("--norm", "adversary", "norm", str, listing("robeval.attacks", "NORMS", sep=" or ")),
    ("--eps", "adversary", "eps", str, "radius in [0,1] pixel units, e.g. 8/255"),
    ("--steps", "adversary", "steps", int, "attack steps (PGD-K, TRADES)"),
    ("--step-size", "adversary", "step_size", str, "attack step, e.g. 2/255 (default: see docs)"),
    ("--random-start/--no-random-start", "adversary", "random_start", None, "uniform start in the ball"),
    ("--bn-mode", "adversary", "bn_mode", str,
     listing("robeval.train.config", "BN_MODES", "BatchNorm while crafting: {}", " or ")),
    ("--eps-warmup-epochs", "adversary", "eps_warmup_epochs", float, "linear ε warm-up"),
    ("--trades-beta", "adversary", "trades_beta", float, "TRADES β"),
    ("--igr-lambda", "adversary", "igr_lambda", str, "IGR weight (default ε)"),
    ("--optimizer", "optim", "optimizer", str, listing("robeval.train.optimizers", "OPTIMIZERS")),
    ("--lr", "optim", "lr", str, "peak learning rate at --base-batch-size"),
    ("--momentum", "optim", "momentum", float, "SGD momentum"),
    ("--nesterov/--no-nesterov", "optim", "nesterov", None, "Nesterov momentum"),
    ("--weight-decay", "optim", "weight_decay", str, "weight decay"),
    ("--schedule", "optim", "schedule", str, listing("robeval.train.schedule", "SCHEDULES")),
    ("--milestones", "optim", "milestones", str, "piecewise milestones, e.g. 100,105"),
    ("--gamma", "optim", "gamma", float, "piecewise LR factor"),
    ("--warmup-epochs", "optim", "warmup_epochs", float, "linear LR warm-up"),
    ("--batch-size", "optim", "batch_size", int, "images per step"),
    ("--lr-scaling", "optim", "lr_scaling", str, "none or linear (lr × bs / base bs)"),
    ("--base-batch-size", "optim", "base_batch_size", int, "batch size the LR refers to"),
    ("--label-smoothing", "optim", "label_smoothing", float, "on the training loss"),
    ("--epochs", None, "epochs", int, "training epochs"),
    ("--seed", None, "seed", int, "seed of the run"),
    ("--device", None, "device", str, "auto, cuda or cpu"),
    ("--amp/--no-amp", None, "amp", None, "bf16 mixed precision on CUDA"),
    ("--val-pgd-steps", None, "val_pgd_steps", int, "validation PGD-K"),
    ("--early-stop-patience", None, "early_stop_patience", int, "epochs without improvement"),
    ("--diagnostics-batch", None, "diagnostics_batch", int,
     "fixed training images for per-epoch gradient diagnostics (0: off)"),
    ("--stop-on-collapse/--no-stop-on-collapse", None, "stop_on_collapse", None,
     "end the run when catastrophic overfitting is flagged"),
    ("--sync-bn/--no-sync-bn", None, "sync_bn", None,
     "with several ranks: BatchNorm statistics over the global batch"),
]


def _dest(option: str) -> str:
    return option.split("/")[0].lstrip("-").replace("-", "_")


def train_options(command):
    """Add one click option per config field in TRAIN_OPTIONS (all default to "not given")."""
    for option, _, _, kind, help_text in reversed(TRAIN_OPTIONS):
        shown = {"cls": ListedOption, "listed": help_text} if callable(help_text) else {"help": help_text}
        if kind is None:
            command = click.option(option, _dest(option), default=None, **shown)(command)
        else:
            command = click.option(option, _dest(option), type=kind, default=None, **shown)(command)
    return command


def overrides_from(params: dict) -> dict:
    """Nested config overrides from the options the user gave."""
    overrides: dict = {}
    for option, section, field, _, _ in TRAIN_OPTIONS:
        value = params.get(_dest(option))
        if value is None:
            continue
        target = overrides.setdefault(section, {}) if section else overrides
        target[field] = value
    return overrides


nproc_option = click.option(
    "--nproc", type=int, default=None,
    help="run on N local ranks (GPUs, or CPU processes) under torchrun")


def relaunch(nproc: int | None, hint: str) -> bool:
    """Start this command again under torchrun on `nproc` ranks; False when not asked to."""
    from robeval.distributed import launch, launched_by_torchrun, strip_option

    if nproc is None or nproc == 1 or launched_by_torchrun():
        return False
    args = click.get_current_context().find_root().obj["args"]
    launch(nproc, strip_option(args, "--nproc"), hint=hint)
    return True


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robeval")
def cli() -> None:
    """robeval: train and evaluate adversarially robust image classifiers."""
    tune_cpu_allocator()


@cli.command()
@click.option("--preset", default=None, help="start from a preset (see --list)")
@click.option("--config", "config_file", default=None, help="YAML config (nested sections)")
@train_options
@click.option("--out", default=None, help="run folder (default checkpoints/<name>)")
@click.option("--resume", is_flag=True, help="continue the run in --out where it stopped")
@click.option("--force", is_flag=True, help="overwrite a different run in --out")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--list", "list_names", is_flag=True, help="list presets, models, activations")
@nproc_option
def train(preset, config_file, out, resume, force, quiet, list_names, nproc, **params) -> None:
    """Smooth adversarial training: write checkpoints, config and history to --out."""
    from robeval.distributed import main_only, session
    from robeval.train import resolve_config
    from robeval.train import train as run_training

    if list_names:
        click.echo(known_names())
        return
    config = resolve_config(preset, config_file, overrides_from(params))
    out_dir = Path(out) if out else Path("checkpoints") / default_run_name(config)
    if relaunch(nproc, f"finished epochs are kept in {out_dir}: rerun with --resume to continue"):
        return
    with session(config.device) as world:
        echo = main_only(click.echo, world)
        echo(f"training {config.model.arch} ({config.model.activation}) with "
             f"{config.adversary.method} on {config.data.dataset} → {out_dir}")
        result = run_training(config, out_dir, resume=resume, force=force, progress=not quiet,
                              log=click.echo, world=world)
        echo(history_table(result.history))
        echo(f"best checkpoint: {out_dir / 'best.pt'} (epoch {result.best_epoch}, "
             f"val PGD acc {100 * (result.best_val_pgd_acc or 0):.1f}%)")


@cli.command()
@click.argument("model_spec", metavar="MODEL")
@click.option("--suite", default="pgd1,pgd200,aa", show_default=True,
              help="attacks, e.g. fgsm,pgd10,pgd200(step=1/255,restarts=2),aa; `corruptions` or "
                   "corruptions(types=fog+noise,severities=1-3) adds the common corruptions")
@click.option("--eps", default=None, help="radius in [0,1] units (default: the model's training ε)")
@click.option("--norm", default=None, cls=ListedOption, listed=NORM_HELP)
@click.option("--n", "--n-images", "n_images", type=int, default=1000, show_default=True,
              help="evaluate the first N test images")
@click.option("--batch-size", default="auto", show_default=True, help="auto or a number")
@click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu")
@click.option("--dataset", default=None, help="default: the model's training dataset")
@click.option("--data-dir", default=None, help="folder with the official dataset files")
@click.option("--db", default="reports/robeval.sqlite", show_default=True,
              help="results store (SQLite)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", default="cascade", show_default=True, cls=ListedOption, listed=mode_help)
@click.option("--arch", default=None, help="architecture of a plain state_dict file")
@click.option("--activation", default=None, help="activation of a plain state_dict file")
@click.option("--model-dir", default="models", show_default=True,
              help="RobustBench model folder (for robustbench:NAME)")
@click.option("--fresh", is_flag=True, help="discard stored outcomes of this evaluation")
@click.option("--checks/--no-checks", default=True, show_default=True,
              help="run the cheap gradient-masking checks afterwards")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON document (summary, checks with evidence, engine notes)")
@nproc_option
def attack(model_spec, suite, eps, norm, n_images, batch_size, device, dataset, data_dir, db,
           seed, mode, arch, activation, model_dir, fresh, checks, quiet, as_json, nproc) -> None:
    """Evaluate MODEL (run folder, checkpoint, state_dict + --arch, robustbench:NAME)."""
    from robeval.device import resolve_device
    from robeval.distributed import rank_device, session
    from robeval.evaluate import EvalConfig, check_batch_size, evaluate, format_corruptions, format_summary
    from robeval.results import ResultsStore
    from robeval.sources import load_source

    check_batch_size(batch_size)
    resolve_device(device)
    if relaunch(nproc, f"finished batches are kept in {db}: rerun the same command to continue"):
        return
    parsed_eps = None if eps is None else parse_eps(eps)
    config = EvalConfig(suite=suite, eps=parsed_eps, norm=norm, n=n_images,
                        batch_size=batch_size, seed=seed, mode=mode, dataset=dataset,
                        data_dir=data_dir, device=device, checks=checks)
    with session(device) as world:
        source = load_source(model_spec, arch=arch, activation=activation, dataset=dataset,
                             model_dir=model_dir, eps=parsed_eps, norm=norm,
                             device=rank_device(resolve_device(device), world))
        store = ResultsStore(db) if world.is_main else None  # rank 0 alone writes outcomes
        result = evaluate(source, config, store, fresh=fresh, progress=not quiet,
                          log=progress_log(as_json), world=world)
    if not world.is_main:
        return
    if as_json:
        click.echo(json_document({"model": source.name, "db": str(db), "mode": mode,
                                  **result.to_json()}))
        return
    n_done = int(result.summary.loc["clean", "n"])
    click.echo(f"{source.name} on {n_done} images ({mode}); outcomes in {db} (run "
               f"{result.run_id})")
    click.echo(format_summary(result.summary))
    if result.corruptions is not None:
        click.echo(format_corruptions(result.corruptions))
    for line in result.flag_lines() + result.note_lines():
        click.echo(line)
    if result.checks and all(check.passed for check in result.checks):
        click.echo(f"gradient-masking checks passed: {', '.join(c.name for c in result.checks)}")


@cli.command()
@click.argument("model_spec", metavar="MODEL")
@click.option("--eps", default=None, help="radius in [0,1] units (default: the model's training ε)")
@click.option("--norm", default=None, cls=ListedOption, listed=NORM_HELP)
@click.option("--n", "--n-images", "n_images", type=int, default=200, show_default=True,
              help="diagnose on the first N test images")
@click.option("--checks", "check_names", default="all", show_default=True,
              help="all, cheap, or a comma-separated list of checks")
@click.option("--pgd-steps", type=int, default=10, show_default=True,
              help="K of the PGD perturbation in R(x, δ_PGD) and the loss gap")
@click.option("--device", default="auto", show_default=True)
@click.option("--dataset", default=None)
@click.option("--data-dir", default=None)
@click.option("--db", default="reports/robeval.sqlite", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--arch", default=None, help="architecture of a plain state_dict file")
@click.option("--activation", default=None, help="activation of a plain state_dict file")
@click.option("--model-dir", default="models", show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="print one JSON document (gradient table, checks with full evidence, flags)")
def diagnose(model_spec, eps, norm, n_images, check_names, pgd_steps, device, dataset, data_dir,
             db, seed, arch, activation, model_dir, as_json) -> None:
    """Gradient-quality diagnostics and all gradient-masking checks for MODEL."""
    from robeval.device import resolve_device
    from robeval.diagnose import diagnose as run_diagnose
    from robeval.diagnose import diagnosis_json, summary_lines
    from robeval.evaluate import EvalConfig
    from robeval.results import ResultsStore
    from robeval.sources import load_source

    if pgd_steps < 1:
        raise RobevalError(f"--pgd-steps {pgd_steps} must be at least 1 (e.g. 10)")
    parsed_eps = None if eps is None else parse_eps(eps)
    source = load_source(model_spec, arch=arch, activation=activation, dataset=dataset,
                         model_dir=model_dir, eps=parsed_eps, norm=norm,
                         device=resolve_device(device))
    config = EvalConfig(eps=parsed_eps, norm=norm, n=n_images, seed=seed, dataset=dataset,
                        data_dir=data_dir, device=device)
    names = check_names if check_names in ("all", "cheap") else check_names.split(",")
    result = run_diagnose(source, config, ResultsStore(db), checks=names, pgd_steps=pgd_steps,
                          log=progress_log(as_json))
    if as_json:
        click.echo(json_document({"db": str(db), **diagnosis_json(result)}))
        return
    click.echo("\n".join(summary_lines(result, str(db))))


def progress_log(as_json: bool) -> Callable[[str], None]:
    """Where progress messages go: stdout, or stderr when stdout holds a JSON document."""
    return (lambda message: click.echo(message, err=True)) if as_json else click.echo


def json_document(document: dict) -> str:
    """`document` as strict JSON (no NaN), for --json."""
    import json

    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)


@cli.command()
@click.argument("run_ids", nargs=-1, type=int)
@click.option("--db", default="reports/robeval.sqlite", show_default=True, help="results store")
@click.option("--baseline", type=int, default=None, help="run id the other rows are compared with")
@click.option("--format", "formats", default="md,pdf,tex", show_default=True,
              help="comma-separated: md, pdf, tex, html (a leaderboard site: index.html)")
@click.option("--out", default="reports/report", show_default=True, help="report folder")
@click.option("--ci", is_flag=True, help="confidence intervals in the main table")
@click.option("--title", default="robeval report", show_default=True)
@click.option("--include-unfinished", is_flag=True,
              help="also show evaluations that did not finish, marked in every row")
def report(run_ids, db, baseline, formats, out, ci, title, include_unfinished) -> None:
    """Render paper-style tables and figures for RUN_IDS (default: every finished evaluation)."""
    from robeval.report.build import ReportConfig, build_report
    from robeval.results import ResultsStore

    config = ReportConfig(out=out, runs=tuple(run_ids) or None, baseline=baseline,
                          formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
                          ci=ci, title=title, include_unfinished=include_unfinished)
    with ResultsStore(db, readonly=True) as store:
        paths = build_report(store, config)
    click.echo(f"report written to {out}/")
    for fmt, path in paths.items():
        click.echo(f"  {fmt}: {path}")


@cli.command()
@click.argument("experiment_spec", metavar="EXPERIMENT")
@click.option("--data-dir", default=None, help="folder with the official dataset files")
@click.option("--root", default=".", show_default=True,
              help="folder holding checkpoints/<name> and reports/<name>")
@click.option("--dry-run", is_flag=True, help="list the cells and their status, do nothing")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--records", default=None,
              help="folder of reproduction records (docs/reproduction/records): the cells this "
                   "study's record holds for its present protocol are not run again")
def run(experiment_spec, data_dir, root, dry_run, quiet, records) -> None:
    """Train, evaluate and report EXPERIMENT (a YAML file or a name from experiments/)."""
    from robeval.experiments import cells_table, load_experiment, recorded_cells, run_experiment

    experiment = load_experiment(experiment_spec, data_dir=data_dir)
    click.echo(f"experiment {experiment.name}: {experiment.description}")
    recorded = recorded_cells(experiment, Path(records) if records else None)
    if recorded:
        click.echo(f"{len(recorded)} cells are in the record {records}: not run again")
    result = run_experiment(experiment, Path(root), dry_run=dry_run, progress=not quiet,
                            log=click.echo, recorded=recorded)
    if not dry_run:
        click.echo(cells_table(result.cells))
        for fmt, path in (result.report or {}).items():
            click.echo(f"  {fmt}: {path}")


@cli.command()
@click.argument("experiment_spec", metavar="EXPERIMENT")
@click.option("--baseline", "baseline_file", required=True, help="baseline JSON to compare with")
@click.option("--data-dir", default=None, help="folder with the official dataset files")
@click.option("--root", default=None,
              help="empty folder for the fresh runs (default: a temporary one, removed afterwards)")
@click.option("--update", is_flag=True, help="rerun at every --seeds and rewrite the baseline")
@click.option("--seeds", default="0,1,2", show_default=True,
              help="with --update: seeds measuring the spread; the first is the check seed")
@click.option("--quiet", is_flag=True, help="no progress bars")
def check(experiment_spec, baseline_file, data_dir, root, update, seeds, quiet) -> int:
    """Rerun EXPERIMENT at a fixed seed; exit 1 when a metric moved beyond the baseline's tolerance."""
    from robeval.check import check_table, parse_seeds, run_check, update_baseline, verdict
    from robeval.experiments import load_experiment

    seed_list = parse_seeds(seeds)
    experiment = load_experiment(experiment_spec, data_dir=data_dir)
    if update:
        baseline = update_baseline(experiment, baseline_file, root, seed_list, progress=not quiet,
                                   log=click.echo)
        click.echo(f"baseline of {experiment.name} ({len(baseline['cells'])} cells, seeds "
                   f"{','.join(map(str, seed_list))}) written to {baseline_file}")
        return 0
    result = run_check(experiment, baseline_file, root, progress=not quiet, log=click.echo)
    click.echo(check_table(result.metrics))
    click.echo(verdict(result))
    return 0 if result.passed else 1


def default_run_name(config) -> str:
    """checkpoints/<dataset>-<model>-<activation>-<method>-s<seed>."""
    activation = config.model.activation.split("(")[0]
    if config.model.smooth_grad != "none":
        activation += f"-sg-{config.model.smooth_grad}"
    return (f"{config.data.dataset}-{config.model.arch}-{activation}-"
            f"{config.adversary.method}-s{config.seed}")


def history_table(history: list[dict]) -> str:
    """The per-epoch history as a fixed-width table."""
    import pandas as pd

    if not history:
        return "(no epochs)"
    frame = pd.DataFrame(history)
    rates = [c for c in ("train_clean_acc", "train_adv_acc", "craft_clean_acc", "val_clean_acc",
                         "val_pgd_acc") if c in frame]   # histories written earlier lack craft_clean_acc
    frame = frame[["epoch", "loss", *rates, "lr", "time"]]
    for column in rates:
        frame[column] = frame[column].map(lambda v: "-" if v is None or v != v else f"{100 * v:.1f}")
    return frame.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def known_names() -> str:
    """Presets, models, activations and datasets, one line each."""
    from robeval.activations import ACTIVATIONS
    from robeval.data import DATASETS
    from robeval.models import model_names
    from robeval.train.config import PRESETS

    return "\n".join([f"presets: {', '.join(sorted(PRESETS))}",
                      f"models: {', '.join(model_names())}",
                      f"activations: {', '.join(ACTIVATIONS.names())}",
                      f"datasets: {', '.join(DATASETS.names())}"])


def rank_prefix() -> str:
    """'[rank R] ' in ranks other than 0 of a torchrun job, so each message says where it arose."""
    rank = os.environ.get("RANK", "0")
    return f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 and rank != "0" else ""


def usage_error_line(err: click.UsageError) -> str:
    """A command-line mistake (unknown option, a value of the wrong type) as one line, like
    robeval's own errors, naming where the options are listed."""
    message = " ".join(line.strip() for line in err.format_message().splitlines() if line.strip())
    command = err.ctx.command_path if err.ctx else "robeval"
    return f"error: {message[:1].lower()}{message[1:]} (options: {command} -h)"


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=args, prog_name="robeval", standalone_mode=False,
                        obj={"args": args})
    except PeerError:
        return 2       # rank 0 prints it
    except RobevalError as err:
        click.echo(f"{rank_prefix()}error: {err}", err=True)
        return 2
    except click.UsageError as err:
        click.echo(usage_error_line(err), err=True)
        return err.exit_code
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted: finished epochs are saved; rerun with --resume", err=True)
        return 130
    except Exception as err:
        from robeval.distributed import lost_peer

        if not lost_peer(err):
            raise
        click.echo(f"error: another rank stopped ({first_line(err)}); finished work is saved: "
                   "rerun the same command (train: with --resume) to continue", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
