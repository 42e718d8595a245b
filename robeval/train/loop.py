"""The training loop: epochs, validation, history, checkpoints and exact resume."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from robeval.activations import OPTIMIZER, gradient_phase
from robeval.attacks import ThreatModel, build_attack
from robeval.attacks.pgd import perturb
from robeval.attacks.steps import get_norm
from robeval.checkpoints import (
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    write_jsonl,
)
from robeval.data import DatasetInfo, load_data
from robeval.data.batches import BatchSource
from robeval.device import resolve_device
from robeval.diagnostics.gradients import gradient_diagnostics, summary_dict
from robeval.distributed import (
    SINGLE,
    World,
    all_sum,
    barrier,
    broadcast,
    current,
    main_only,
    on_main,
    rank_device,
    sync_batchnorm,
    wrap,
)
from robeval.errors import PeerError, RobevalError
from robeval.models import NormalizedModel
from robeval.models import model_for as build_network
from robeval.train.config import TrainConfig, config_from_dict, config_to_dict
from robeval.train.config import validate as validate_config
from robeval.train.methods import METHODS
from robeval.train.optimizers import OPTIMIZERS
from robeval.train.schedule import eps_at, lr_at
from robeval.yamlfile import parse_yaml

RUN_FILES = ("config.yaml", "last.pt", "best.pt", "history.jsonl")
EpochCallback = Callable[[int, dict, nn.Module], None]  # (epoch, history row, model)


@dataclass
class TrainResult:
    """Where a run landed and how it went."""

    out: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_pgd_acc: float | None = None
    stopped_early: bool = False


def model_for(config: TrainConfig, info: DatasetInfo) -> NormalizedModel:
    """The network a config describes, sized for its dataset."""
    return build_network(config.model, info)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser (its LR is set every step from the schedule)."""
    return OPTIMIZERS.get(config.optim.optimizer)(model.parameters(), config)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: order, augmentation and random starts derive from it."""
    return seed * 1_000_003 + epoch


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool, force: bool) -> dict | None:
    """Check `out` against the run about to start; return the state to resume from, if any."""
    config_path, wanted = out / "config.yaml", config_to_dict(config)
    if out.exists() and not out.is_dir():
        raise RobevalError(f"--out {out} is a file, not a folder: pass --out with a folder path")
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if config_path.is_file():
        if _normalised(_saved_config(config_path)) != wanted:
            raise RobevalError(
                f"{out} holds a different run: choose another --out, or pass --force to overwrite it"
            )
        if not resume:
            raise RobevalError(f"{out} already holds this run: pass --resume to continue it "
                               "or --force to start over")
        if (out / "last.pt").is_file():
            return training_state(out / "last.pt")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_path, yaml.safe_dump(wanted, sort_keys=False))
    except OSError as err:
        raise RobevalError(f"cannot write the run folder {out} ({err.strerror or err}): "
                           "pass --out with a writable folder") from err
    return None


def holds_run_of(out: Path, config: TrainConfig) -> bool:
    """Whether the run folder `out` was written for `config` (its config.yaml, with the defaults
    of settings added since, equals `config`)."""
    path = out / "config.yaml"
    return path.is_file() and _same_data_folder(_normalised(_saved_config(path))) == \
        _same_data_folder(config_to_dict(config))


def _same_data_folder(settings: dict | None) -> dict | None:
    """`settings` with its data folder as the folder it names, so that `../data` and the same
    folder's absolute path are one setting (moving the data still makes another run)."""
    if settings is None or not settings["data"].get("data_dir"):
        return settings
    folder = str(Path(settings["data"]["data_dir"]).expanduser().resolve())
    return {**settings, "data": {**settings["data"], "data_dir": folder}}


def _saved_config(path: Path) -> dict:
    """The config.yaml of an existing run; an unreadable one is a one-line error."""
    try:
        saved = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise RobevalError(f"{path} is corrupt ({type(err).__name__}): restore it, or pass "
                           "--force to start the run over") from err
    if not isinstance(saved, dict):
        raise RobevalError(f"{path} does not hold a run config: restore it, or pass --force "
                           "to start the run over")
    return saved


def training_state(path: Path) -> dict:
    """The resumable state in last.pt; anything else is a one-line error."""
    state = load_checkpoint(path)
    needed = {"model", "optimizer", "epoch", "best"}
    if not isinstance(state, dict) or not needed <= set(state) or not isinstance(state["best"], dict):
        raise RobevalError(f"{path} is not a robeval training state: restore it, or pass --force "
                           "to start the run over")
    return state


def _normalised(saved) -> dict | None:
    """A saved config with the defaults of settings added since it was written."""
    try:
        return config_to_dict(config_from_dict(saved))
    except (RobevalError, TypeError, AttributeError):
        return None


@torch.no_grad()
def _correct(logits: torch.Tensor | None, labels: torch.Tensor) -> int | None:
    return None if logits is None else int((logits.argmax(1) == labels).sum())


# An extra clean forward pass costs about a fifth of a one-step attack's training step, so
# where the method does not get the clean figure for free it is measured on every 8th batch.
CLEAN_ACCURACY_EVERY = 8


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, source: BatchSource,
                    config: TrainConfig, epoch: int, progress: bool,
                    world: World = SINGLE, out: Path | None = None) -> dict:
    """One pass over the training set; returns loss and accuracies (None where not measured).

    `train_clean_acc` and `train_adv_acc` are measured in training mode (BatchNorm on batch
    statistics); `train_clean_acc` on every batch where the method gets it for free, else on
    every CLEAN_ACCURACY_EVERY-th batch (the first of each run of them), an unbiased sample;
    `craft_clean_acc` is the clean accuracy of the crafting pass, with BatchNorm in the
    crafting mode (`adversary.bn_mode`). With several ranks each
    one trains on its part of every global batch and the figures are summed over the ranks.
    After every optimiser step a non-finite loss, gradient, parameter or buffer on any rank
    stops the run on all ranks with a one-line error (`out` is the run folder it names).
    """
    method = METHODS.get(config.adversary.method)
    criterion = lambda logits, labels: F.cross_entropy(  # noqa: E731
        logits, labels, label_smoothing=config.optim.label_smoothing)
    batch_size = config.optim.batch_size
    n_batches = max(1, len(source) // batch_size)
    device = next(model.parameters()).device
    amp = torch.autocast("cuda", dtype=torch.bfloat16,
                         enabled=config.amp and device.type == "cuda")
    totals = dict.fromkeys(("loss", "seen", "clean", "clean_seen", "adv", "adv_seen", "craft",
                            "craft_seen"), 0.0)
    batches = source.batches(batch_size, epoch_seed(config.seed, epoch), shuffle=True,
                             drop_last=True, shard=(world.rank, world.size))
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}",
               leave=False, disable=not (progress and world.is_main), unit="batch")
    model.train()
    for index, (images, labels) in enumerate(bar):
        progress_epochs = epoch + index / n_batches
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, progress_epochs)
        eps = eps_at(config, progress_epochs)
        with gradient_phase(model, OPTIMIZER), amp:
            output = method(model, images, labels, config.adversary, eps, criterion,
                            measure_clean=index % CLEAN_ACCURACY_EVERY == 0)
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        loss, here, anywhere = _nonfinite_everywhere(model, output.loss, world, device)
        if any(anywhere):
            raise _diverged(loss, here, anywhere, epoch, index, out, world)
        size = len(labels)
        totals["loss"] += loss * size
        totals["seen"] += size
        for key, logits in (("clean", output.clean_logits), ("adv", output.adv_logits),
                            ("craft", output.craft_logits)):
            correct = _correct(logits, labels)
            if correct is not None:
                totals[key] += correct
                totals[f"{key}_seen"] += size
        bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}")
    totals = dict(zip(totals, all_sum(list(totals.values()), world, device), strict=True))

    def rate(key):
        return totals[key] / totals[f"{key}_seen"] if totals[f"{key}_seen"] else None

    return {"loss": totals["loss"] / max(totals["seen"], 1), "train_clean_acc": rate("clean"),
            "train_adv_acc": rate("adv"), "craft_clean_acc": rate("craft")}


HEALTH = ("gradients", "parameters", "buffers")   # checked after every optimiser step


def _nonfinite_everywhere(model: nn.Module, loss: torch.Tensor, world: World,
                          device: torch.device) -> tuple[float, list[float], list[float]]:
    """This rank's loss value and how many [losses, *HEALTH] are non-finite here and on all ranks.

    One host sync per step: fused norms flag suspects (nan or inf norm), and only then an exact
    per-tensor test runs, since the norm of huge but finite weights can overflow to inf. Every
    rank takes the same branches because the counts are all-reduced, so all ranks stop together.
    """
    groups = _health_tensors(model)
    loss = loss.detach()
    flags = [~loss.isfinite()] + [_count_nonfinite(tensors, device, exact=False) for tensors in groups]
    value, *here = torch.stack([loss.float(), *flags]).tolist()
    anywhere = all_sum(here, world, device)
    if any(anywhere[1:]):
        exact = torch.stack([_count_nonfinite(tensors, device, exact=True) for tensors in groups])
        here = here[:1] + exact.tolist()
        anywhere = anywhere[:1] + all_sum(here[1:], world, device)
    return value, here, anywhere


def _health_tensors(model: nn.Module) -> list[list[torch.Tensor]]:
    """The floating-point gradients, parameters and buffers of `model` (the HEALTH groups)."""
    params = list(model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    return [grads, params, buffers]


def _count_nonfinite(tensors: list[torch.Tensor], device: torch.device, exact: bool) -> torch.Tensor:
    """How many of `tensors` hold a nan or inf, as a 0-d tensor (no host sync).

    Not `exact`: one fused `_foreach_norm` kernel; a finite tensor whose norm overflows counts too.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.long, device=device)
    if exact:
        finite = torch.stack([t.detach().isfinite().all() for t in tensors])
    else:
        finite = torch.stack(torch._foreach_norm([t.detach() for t in tensors])).isfinite()
    return (~finite).sum()


def _diverged(loss: float, here: list[float], anywhere: list[float], epoch: int, index: int,
              out: Path | None, world: World) -> RobevalError:
    """The one-line error of a step that left something non-finite (rank 0 alone prints it).

    It counts this rank's tensors (the parameters are the same on every rank), or the other
    ranks' where this one is still finite.
    """
    counts, where = (here, "") if any(here) else (anywhere, " on another rank")
    problems = [f"{int(n)} {name if n != 1 else name[:-1]}"
                for n, name in zip(counts[1:], HEALTH, strict=True) if n]
    if counts[0]:
        subject = f"loss became {loss if here[0] else 'non-finite'}{where}"
    else:
        subject, problems = f"{problems[0]} became non-finite{where}", problems[1:]
    also = f" (also non-finite: {', '.join(problems)})" if problems else ""
    if epoch == 0:
        kept = "no epoch had finished, so no checkpoint was saved"
    elif out is None:
        kept = f"the weights of epoch {epoch + 1} were not saved"
    else:
        kept = f"the last finite checkpoint (epoch {epoch}) is kept in {out / 'last.pt'}"
    message = (f"training diverged: {subject} at epoch {epoch + 1}, step {index + 1}{also}: "
               f"lower --lr or add --warmup-epochs; {kept}")
    return RobevalError(message) if world.is_main else PeerError(message)


def validate(model: nn.Module, source: BatchSource, eps: float, steps: int, norm: str,
             batch_size: int, seed: int, world: World = SINGLE) -> dict:
    """Clean and PGD-K accuracy (step ε/4, random start) with the exact gradient, eval mode.

    A point counts as robust when it is classified correctly both clean and at the attack's
    last iterate. Only the clean-correct points are attacked, since the others count as
    broken whatever the attack does; the random starts are drawn for the whole batch first, so
    every point starts where it would if all were attacked and the accuracies are those of
    attacking every point. With several ranks each one attacks its part of every batch and the
    counts are summed.
    """
    model.eval()
    torch.manual_seed(rank_seed(seed, world))
    clean = robust = total = 0
    device = next(model.parameters()).device
    for images, labels in source.batches(batch_size, seed, shard=(world.rank, world.size)):
        with torch.no_grad():
            clean_ok = model(images).argmax(1) == labels
        start = get_norm(norm).random_start(images.shape, eps, images)
        attacked = clean_ok.nonzero().flatten()
        if len(attacked):
            adv_images, _ = perturb(model, images[attacked], labels[attacked], eps, steps, eps / 4,
                                    norm, init=start[attacked])
            with torch.no_grad():
                robust += int((model(adv_images).argmax(1) == labels[attacked]).sum())
        clean += len(attacked)
        total += len(labels)
    model.train()
    clean, robust, total = all_sum([clean, robust, total], world, device)
    total = max(total, 1)
    return {"val_clean_acc": clean / total, "val_pgd_acc": robust / total}


def rank_seed(seed: int, world: World) -> int:
    """The seed of this rank's random starts (rank 0's equals a single process's)."""
    return seed + 7_919 * world.rank


def fixed_batch(source: BatchSource, size: int):
    """The same `size` training images every epoch (the first batch of a seed-0 pass)."""
    return next(iter(source.batches(size, seed=0, shuffle=False)))


def epoch_diagnostics(model: nn.Module, batch, config: TrainConfig, seed: int) -> dict:
    """Gradient quality and FGSM/PGD-10 accuracy on the fixed batch, as flat history fields."""

    images, labels = batch
    eps, norm = config.adversary.eps, config.adversary.norm
    model.eval()
    values = summary_dict(gradient_diagnostics(model, images, labels, eps, norm, seed=seed))
    threat = ThreatModel(eps, norm)
    with torch.no_grad():
        clean = model(images).argmax(1) == labels
    for name in ("fgsm", "pgd10"):
        outcome = build_attack(name, threat).run(model, images[clean], labels[clean], seed)
        values[f"diag_{name}_acc"] = float(outcome.robust.sum()) / len(labels)
    model.train()
    return {f"diag_{k}" if not k.startswith("diag_") else k: v for k, v in values.items()}


def collapsed(history: list[dict], row: dict) -> bool:
    """Catastrophic overfitting: PGD accuracy on the fixed training batch collapses while FGSM's stays high.

    Flagged when the PGD-10 accuracy fell by at least 10 points and below half of its best so
    far, while FGSM accuracy on the same images is at least 20 points above it (FGSM still
    "succeeds" at training, the multi-step attacker does not: Wong et al., 2020).
    """
    if "diag_pgd10_acc" not in row:
        return False
    best = max([r.get("diag_pgd10_acc", 0.0) for r in history] + [row["diag_pgd10_acc"]])
    pgd, fgsm = row["diag_pgd10_acc"], row["diag_fgsm_acc"]
    return best - pgd >= 0.10 and pgd < 0.5 * best and fgsm - pgd >= 0.20


def _state(model, optimizer, config, epoch, best) -> dict:
    return {"format": "robeval-train-state/1", "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
            "config": config_to_dict(config)}


def summary_line(row: dict, config: TrainConfig) -> str:
    """One line per epoch for the log."""

    def pct(key):
        value = row.get(key)
        return "  -  " if value is None else f"{100 * value:5.1f}%"

    return (f"epoch {row['epoch']:>3}/{config.epochs}  loss {row['loss']:.4f}  "
            f"train clean {pct('train_clean_acc')} adv {pct('train_adv_acc')}  "
            f"val clean {pct('val_clean_acc')} pgd{config.val_pgd_steps} {pct('val_pgd_acc')}  "
            f"lr {row['lr']:.4g}  eps {row['eps'] * 255:.2f}/255  {row['time']:.1f}s")


def train(config: TrainConfig, out: str | Path, resume: bool = False, force: bool = False,
          progress: bool = True, log: Callable[[str], None] = print,
          callbacks: Sequence[EpochCallback] = (), world: World | None = None) -> TrainResult:
    """Train `config` into the run folder `out` (config.yaml, last.pt, best.pt, history.jsonl).

    With `resume`, an interrupted run continues from its last finished epoch and ends with the
    same weights as an uninterrupted one (on CPU); an existing run is never overwritten
    without `force`. Under torchrun every rank calls this: the model is wrapped in
    DistributedDataParallel, each rank trains on its part of every global batch, and only
    rank 0 writes files, logs and calls `callbacks`.
    """
    out = Path(out)
    config = validate_config(config)   # a TrainConfig built in code skips config_from_dict's checks
    world = world or current()
    log = main_only(log, world)
    state, history = on_main(lambda: _open_run(out, config, resume, force, world, log), world)
    device = rank_device(resolve_device(config.device), world)
    torch.manual_seed(config.seed)
    data = load_data(config.data, device)
    if len(data.train) < config.optim.batch_size:
        raise RobevalError(f"{len(data.train)} training images are fewer than --batch-size "
                           f"{config.optim.batch_size}, so no full batch would train: raise "
                           "--train-subset or lower --batch-size")
    network = model_for(config, data.info).to(device)
    if config.sync_bn and world.distributed:
        network = sync_batchnorm(network, device)
    optimizer = make_optimizer(config, network)
    val_source = data.val if data.val is not None else data.test
    best, start = {"epoch": None, "val_pgd_acc": None}, 0
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["epoch"]), dict(state["best"])
        log(f"resuming {out} after epoch {start}")
    model = wrap(network, world, device)
    if world.distributed:
        log(f"{world.size} ranks × {config.optim.batch_size // world.size} images = global batch "
            f"{config.optim.batch_size}; peak lr {config.effective_lr:g} (scaling "
            f"{config.optim.lr_scaling}); BatchNorm {'synchronised' if config.sync_bn else 'per rank'}")
    result = TrainResult(out, history, best["epoch"], best["val_pgd_acc"])
    probe = (fixed_batch(data.train, config.diagnostics_batch)
             if config.diagnostics_batch and world.is_main else None)
    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        torch.manual_seed(rank_seed(epoch_seed(config.seed, epoch), world))
        row = {"epoch": epoch + 1, "lr": lr_at(config, epoch), "eps": eps_at(config, epoch)}
        row.update(train_one_epoch(model, optimizer, data.train, config, epoch, progress, world,
                                   out))
        row.update(validate(network, val_source, config.adversary.eps, config.val_pgd_steps,
                            config.adversary.norm, config.val_batch_size,
                            epoch_seed(config.seed, epoch) + 1, world))
        if probe is not None:
            row.update(epoch_diagnostics(network, probe, config, epoch_seed(config.seed, epoch) + 2))
            row["collapse"] = collapsed(history, row)
        row["time"] = time.perf_counter() - started
        if world.distributed:
            row["ranks"] = world.size
        row = broadcast(row, world)   # every rank takes rank 0's decisions below
        history.append(row)
        improved = best["val_pgd_acc"] is None or row["val_pgd_acc"] > best["val_pgd_acc"]
        if improved:
            best = {"epoch": epoch + 1, "val_pgd_acc": row["val_pgd_acc"]}
        if world.is_main:
            with _disk_errors(out, epoch):
                if improved:
                    save_checkpoint({"format": "robeval-checkpoint/1", "model": network.state_dict(),
                                     "epoch": epoch + 1, "val_pgd_acc": row["val_pgd_acc"],
                                     "config": config_to_dict(config)}, out / "best.pt")
                write_jsonl(out / "history.jsonl", history)
                save_checkpoint(_state(network, optimizer, config, epoch + 1, best), out / "last.pt")
            for callback in callbacks:
                callback(epoch + 1, row, network)
        log(summary_line(row, config))
        if row.get("collapse"):
            log(f"catastrophic overfitting flagged at epoch {epoch + 1}: PGD-10 accuracy on the "
                f"fixed training batch {100 * row['diag_pgd10_acc']:.1f}% vs FGSM "
                f"{100 * row['diag_fgsm_acc']:.1f}%")
            if config.stop_on_collapse:
                log(f"stopping (--stop-on-collapse); best checkpoint: epoch {best['epoch']}")
                result.stopped_early = True
                break
        patience = config.early_stop_patience
        if patience is not None and epoch + 1 - best["epoch"] >= patience:
            log(f"early stop: no better val PGD accuracy for {patience} epochs")
            result.stopped_early = True
            break
    barrier(world)
    result.history = history
    result.best_epoch, result.best_val_pgd_acc = best["epoch"], best["val_pgd_acc"]
    return result


@contextmanager
def _disk_errors(out: Path, epoch: int) -> Iterator[None]:
    """A failed write of epoch `epoch + 1` (disk full, folder gone) as a one-line error.

    Every file is written atomically, so the previous last.pt is still whole and resumable.
    """
    try:
        yield
    except OSError as err:
        raise RobevalError(
            f"cannot save epoch {epoch + 1} in {out} ({err.strerror or err}): free disk space, then "
            f"rerun with --resume to continue after epoch {epoch}") from err


def _open_run(out: Path, config: TrainConfig, resume: bool, force: bool, world: World,
              log: Callable[[str], None]) -> tuple[dict | None, list[dict]]:
    """Rank 0's view of the run folder: the state to resume from and the history so far."""
    if config.optim.batch_size % world.size:
        raise RobevalError(f"--batch-size {config.optim.batch_size} does not split evenly over "
                           f"{world.size} ranks: choose a multiple of {world.size}")
    state = prepare_run_dir(out, config, resume, force)
    if state is None:
        if resume:
            log(f"no previous run in {out}: starting fresh")
        return None, []
    history, dropped = read_history(out / "history.jsonl")
    history = history[:int(state["epoch"])]
    if dropped:
        write_jsonl(out / "history.jsonl", history)
        log(f"{out / 'history.jsonl'} ended in a half-written line: dropped it; resuming")
    return state, history


def read_history(path: Path) -> tuple[list[dict], bool]:
    """The rows of history.jsonl and whether a half-written last line was dropped."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.is_file() else []
    except UnicodeDecodeError as err:
        raise RobevalError(f"{path} is not UTF-8 text: restore it or pass --force to start over") from err
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                return rows, True
            raise RobevalError(f"{path} line {number} is corrupt: restore it or pass --force to "
                               "start over") from err
        rows.append(row)
    return rows, False
