"""The training loop: epochs, validation, history, checkpoints and exact resume."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from robeval.activations import OPTIMIZER, gradient_phase
from robeval.attacks.pgd import perturb
from robeval.checkpoints import (
    atomic_write_text,
    load_checkpoint,
    read_jsonl,
    save_checkpoint,
    write_jsonl,
)
from robeval.data import DatasetInfo, load_data
from robeval.data.batches import BatchSource
from robeval.errors import RobevalError
from robeval.models import NormalizedModel, build_model
from robeval.train.config import TrainConfig, config_to_dict
from robeval.train.methods import METHODS
from robeval.train.schedule import eps_at, lr_at

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


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RobevalError("--device cuda was asked for but no GPU is visible: use --device cpu")
    return torch.device(name)


def model_for(config: TrainConfig, info: DatasetInfo) -> NormalizedModel:
    """The network a config describes, sized for its dataset."""
    return build_model(config.model.arch, config.model.activation, info.num_classes,
                       info.channels, info.mean, info.std, config.model.smooth_grad)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser (its LR is set every step from the schedule)."""
    optim, params = config.optim, model.parameters()
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.effective_lr, momentum=optim.momentum,
                               nesterov=optim.nesterov, weight_decay=optim.weight_decay)
    cls = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.effective_lr, weight_decay=optim.weight_decay)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: order, augmentation and random starts derive from it."""
    return seed * 1_000_003 + epoch


def prepare_run_dir(out: Path, config: TrainConfig, resume: bool, force: bool) -> dict | None:
    """Check `out` against the run about to start; return the state to resume from, if any."""
    config_path, wanted = out / "config.yaml", config_to_dict(config)
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    if config_path.is_file():
        saved = yaml.safe_load(config_path.read_text())
        if saved != wanted:
            raise RobevalError(
                f"{out} holds a different run: choose another --out, or pass --force to overwrite it"
            )
        if not resume:
            raise RobevalError(f"{out} already holds this run: pass --resume to continue it "
                               "or --force to start over")
        if (out / "last.pt").is_file():
            return load_checkpoint(out / "last.pt")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, yaml.safe_dump(wanted, sort_keys=False))
    return None


@torch.no_grad()
def _correct(logits: torch.Tensor | None, labels: torch.Tensor) -> int | None:
    return None if logits is None else int((logits.argmax(1) == labels).sum())


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, source: BatchSource,
                    config: TrainConfig, epoch: int, progress: bool) -> dict:
    """One pass over the training set; returns loss and accuracies (None where not measured)."""
    method = METHODS[config.adversary.method]
    criterion = lambda logits, labels: F.cross_entropy(  # noqa: E731
        logits, labels, label_smoothing=config.optim.label_smoothing)
    batch_size = config.optim.batch_size
    n_batches = max(1, len(source) // batch_size)
    device = next(model.parameters()).device
    amp = torch.autocast("cuda", dtype=torch.bfloat16,
                         enabled=config.amp and device.type == "cuda")
    totals = {"loss": 0.0, "clean": 0, "adv": 0, "seen": 0, "clean_seen": 0, "adv_seen": 0}
    batches = source.batches(batch_size, epoch_seed(config.seed, epoch), shuffle=True,
                             drop_last=True)
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch + 1}/{config.epochs}",
               leave=False, disable=not progress, unit="batch")
    model.train()
    for index, (images, labels) in enumerate(bar):
        progress_epochs = epoch + index / n_batches
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, progress_epochs)
        eps = eps_at(config, progress_epochs)
        with gradient_phase(model, OPTIMIZER), amp:
            output = method(model, images, labels, config.adversary, eps, criterion)
        if not torch.isfinite(output.loss):
            raise RobevalError(
                f"loss became {output.loss.item()} at epoch {epoch + 1}, batch {index + 1}: "
                f"the last good checkpoint is kept; lower --lr or add --warmup-epochs"
            )
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        size = len(labels)
        totals["loss"] += output.loss.item() * size
        totals["seen"] += size
        for key, logits in (("clean", output.clean_logits), ("adv", output.adv_logits)):
            correct = _correct(logits, labels)
            if correct is not None:
                totals[key] += correct
                totals[f"{key}_seen"] += size
        bar.set_postfix(loss=f"{totals['loss'] / totals['seen']:.3f}")
    seen = max(totals["seen"], 1)

    def rate(key):
        return totals[key] / totals[f"{key}_seen"] if totals[f"{key}_seen"] else None

    return {"loss": totals["loss"] / seen, "train_clean_acc": rate("clean"),
            "train_adv_acc": rate("adv")}


def validate(model: nn.Module, source: BatchSource, eps: float, steps: int, norm: str,
             batch_size: int, seed: int) -> dict:
    """Clean and PGD-K accuracy (step ε/4, random start) with the exact gradient, eval mode."""
    model.eval()
    torch.manual_seed(seed)
    clean = robust = total = 0
    for images, labels in source.batches(batch_size, seed):
        with torch.no_grad():
            clean_ok = model(images).argmax(1) == labels
        adv_images, _ = perturb(model, images, labels, eps, steps, eps / 4, norm,
                                random_start=True)
        with torch.no_grad():
            robust_ok = (model(adv_images).argmax(1) == labels) & clean_ok
        clean += int(clean_ok.sum())
        robust += int(robust_ok.sum())
        total += len(labels)
    model.train()
    total = max(total, 1)
    return {"val_clean_acc": clean / total, "val_pgd_acc": robust / total}


def fixed_batch(source: BatchSource, size: int):
    """The same `size` training images every epoch (the first batch of a seed-0 pass)."""
    return next(iter(source.batches(size, seed=0, shuffle=False)))


def epoch_diagnostics(model: nn.Module, batch, config: TrainConfig, seed: int) -> dict:
    """Gradient quality and FGSM/PGD-10 accuracy on the fixed batch, as flat history fields."""
    from robeval.attacks import ThreatModel, build_attack
    from robeval.diagnostics.gradients import gradient_diagnostics, summary_dict

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
          callbacks: Sequence[EpochCallback] = ()) -> TrainResult:
    """Train `config` into the run folder `out` (config.yaml, last.pt, best.pt, history.jsonl).

    With `resume`, an interrupted run continues from its last finished epoch and ends with the
    same weights as an uninterrupted one (on CPU); an existing run is never overwritten
    without `force`.
    """
    out = Path(out)
    state = prepare_run_dir(out, config, resume, force)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = load_data(config.data, device)
    model = model_for(config, data.info).to(device)
    optimizer = make_optimizer(config, model)
    val_source = data.val if data.val is not None else data.test
    history, best, start = [], {"epoch": None, "val_pgd_acc": None}, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = int(state["epoch"]), dict(state["best"])
        history = read_jsonl(out / "history.jsonl")[:start]
        log(f"resuming {out} after epoch {start}")
    result = TrainResult(out, history, best["epoch"], best["val_pgd_acc"])
    probe = fixed_batch(data.train, config.diagnostics_batch) if config.diagnostics_batch else None
    for epoch in range(start, config.epochs):
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(config.seed, epoch))
        row = {"epoch": epoch + 1, "lr": lr_at(config, epoch), "eps": eps_at(config, epoch)}
        row.update(train_one_epoch(model, optimizer, data.train, config, epoch, progress))
        row.update(validate(model, val_source, config.adversary.eps, config.val_pgd_steps,
                            config.adversary.norm, config.val_batch_size,
                            epoch_seed(config.seed, epoch) + 1))
        if probe is not None:
            row.update(epoch_diagnostics(model, probe, config, epoch_seed(config.seed, epoch) + 2))
            row["collapse"] = collapsed(history, row)
        row["time"] = time.perf_counter() - started
        history.append(row)
        write_jsonl(out / "history.jsonl", history)
        if best["val_pgd_acc"] is None or row["val_pgd_acc"] > best["val_pgd_acc"]:
            best = {"epoch": epoch + 1, "val_pgd_acc": row["val_pgd_acc"]}
            save_checkpoint({"format": "robeval-checkpoint/1", "model": model.state_dict(),
                             "epoch": epoch + 1, "val_pgd_acc": row["val_pgd_acc"],
                             "config": config_to_dict(config)}, out / "best.pt")
        save_checkpoint(_state(model, optimizer, config, epoch + 1, best), out / "last.pt")
        log(summary_line(row, config))
        for callback in callbacks:
            callback(epoch + 1, row, model)
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
    result.history = history
    result.best_epoch, result.best_val_pgd_acc = best["epoch"], best["val_pgd_acc"]
    return result
