"""The evaluation engine: a suite of attacks over a test set, batch by batch, into the store.

Each batch is classified clean, then attacked by each attack of the suite in turn. In the
default `cascade` mode an attack only sees the points still robust after the earlier ones
(the AutoAttack way: only still-robust points cost compute, and the last row is the worst
case); in `independent` mode every attack sees every clean-correct point, which gives each
attack's own accuracy. Every batch is committed to the results store in one transaction, so
an interrupted evaluation resumes at the first unfinished batch and ends with the same
per-sample outcomes; randomness is seeded per run, batch and attack. A suite holding the common
corruptions (`corruptions(...)`) also classifies every image of each batch under each of its
(type, severity) conditions, after the attacks and apart from them (no cascade, no worst case).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robeval.attacks import NORMS, Attack, ThreatModel, parse_suite
from robeval.attacks.corruptions import CorruptionSuite, evaluate_corruptions, split_suite_items
from robeval.attacks.cost import PassCounter
from robeval.attacks.guard import GuardedModel, ModelContractError, check_materialised
from robeval.attacks.verify import Verified, majority_logits, verify
from robeval.data import dataset_info, load_test_set
from robeval.device import resolve_device
from robeval.diagnostics.explain import check_json
from robeval.diagnostics.masking import masking_gate, run_checks, strict_json
from robeval.distributed import World, barrier, current, gather, main_only, on_main, rank_device
from robeval.errors import RobevalError
from robeval.identity import ModelSource, source_identity
from robeval.results import (
    MODES,
    CorruptionBatch,
    CorruptionRow,
    OutcomeRow,
    Passes,
    ResultsStore,
    RunRecord,
    SampleRow,
    corruption_table,
)
from robeval.schema import BatchSize, ImageCount, Seed, validated
from robeval.spec import parse_eps
from robeval.version import __version__

CHECK_IMAGES = 200            # images the cheap masking checks look at
CPU_BATCH_SIZE = 256          # `auto` on CPU: no memory to probe, a size that keeps caches warm
GPU_START_BATCH_SIZE = 4096   # `auto` on GPU: first size tried, halved until it fits


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate a model on; unset fields default to what the model was trained with."""

    suite: str = "pgd1,pgd200,aa"
    eps: float | None = None           # [0,1] pixel units; None: the model's training ε
    norm: str | None = None            # a name in NORMS; None: the model's training norm
    n: ImageCount | None = 1000        # the first n test images (RobustBench convention)
    batch_size: Literal["auto"] | BatchSize = "auto"   # images per batch, or auto (largest that fits)
    seed: Seed = 0
    mode: str = "cascade"              # one of MODES (robeval.results)
    dataset: str | None = None         # None: the model's training dataset (else cifar10)
    data_dir: str | None = None
    device: str = "auto"
    checks: bool = True                # run the cheap gradient-masking checks afterwards


@dataclass
class EvalResult:
    """Where the outcomes are and what they add up to."""

    run_id: int
    store: ResultsStore
    summary: pd.DataFrame
    batches_resumed: int
    checks: list = field(default_factory=list)   # CheckResults of the cheap masking checks
    attack_notes: dict = field(default_factory=dict)  # spec -> AttackNotes (gate, verification)
    corruptions: pd.DataFrame | None = None   # `ResultsStore.corruption_summary`; None without them

    def note_lines(self) -> list[str]:
        """What the engine noted about the attacks (gate fired, unconfirmed breaks, ...)."""
        return [line for spec, notes in self.attack_notes.items() for line in notes.lines(spec)]

    def flag_lines(self) -> list[str]:
        """One line per raised masking flag, as `robeval attack` prints them."""
        return [f"FLAG {check.name}: {check.flag}" for check in self.checks if not check.passed]

    def to_json(self) -> dict:
        """The result as one JSON-ready document (`robeval attack --json`): the summary rows, the
        corruption rows (one per type and severity, and the mean over all; absent without
        corruptions), the masking checks with their full evidence, the engine's notes per attack,
        and the flag and note lines that are printed."""
        corruptions = {} if self.corruptions is None else {"corruptions": corruption_json(self.corruptions)}
        return strict_json({
            "run_id": self.run_id,
            "summary": json.loads(self.summary.rename_axis("attack").reset_index().to_json(orient="records")),
            **corruptions,
            "checks": [check_json(check) for check in self.checks],
            "attack_notes": {spec: asdict(notes) for spec, notes in self.attack_notes.items()},
            "flags": self.flag_lines(), "notes": self.note_lines()})


@dataclass(frozen=True)
class ResolvedEval:
    """An `EvalConfig` with every default filled in from the model."""

    suite: str
    eps: float
    norm: str
    n: int
    seed: int
    mode: str
    dataset: str
    data_dir: str | None


def resolve(config: EvalConfig, source: ModelSource) -> ResolvedEval:
    """Fill ε, norm and dataset from the model; check they are consistent."""
    config = validated(config)
    check_mode(config.mode)
    dataset = config.dataset or source.dataset or "cifar10"
    norm = NORMS.resolve((config.norm or source.norm or "linf").lower())
    eps = parse_eps(config.eps) if config.eps is not None else source.eps
    if eps is None and adversarial(config.suite, norm):
        raise RobevalError(f"{source.name} does not record its ε: pass --eps (e.g. 8/255)")
    eps = 0.0 if eps is None else eps   # common corruptions alone: no adversarial radius
    check_batch_size(config.batch_size)
    classes = dataset_info(dataset).num_classes
    if classes != source.num_classes:
        raise RobevalError(f"{source.name} has {source.num_classes} classes but {dataset} has "
                           f"{classes}: pass the --dataset it was trained on")
    n = config.n if config.n is not None else 10**9
    if n < 1:
        raise RobevalError("--n must be at least 1")
    return ResolvedEval(config.suite, eps, norm, n, config.seed, config.mode, dataset,
                        config.data_dir)


def adversarial(suite: str, norm: str) -> bool:
    """Whether `suite` holds an attack (a suite of common corruptions alone needs no ε)."""
    attacks, _ = split_suite_items(parse_suite(suite, ThreatModel(8 / 255, norm)))
    return bool(attacks)


def check_mode(mode: str) -> None:
    """One of `MODES` (the results store's); anything else is refused before any work."""
    if mode not in MODES:
        raise RobevalError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")


def check_batch_size(value: int | str) -> None:
    """`auto` or a whole number of images (ASCII digits, 1 to `MAX_BATCH`), checked by the
    settings schema; anything else is refused before any work."""
    validated(EvalConfig(batch_size=value))


def batch_seed(seed: int, batch: int, position: int) -> int:
    """The seed of one attack on one batch: fixed by the run seed, batch and attack."""
    return (seed * 1_000_003 + batch * 1_009 + position) % 2**31


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    versions = {"robeval": __version__}
    for package in ("torch", "pyautoattack", "robustbench", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def git_commit() -> str | None:
    """The commit of the robeval source tree, when it is a git checkout."""
    try:
        output = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return output.stdout.strip() or None if output.returncode == 0 else None


def run_key(source: ModelSource, plan: ResolvedEval, specs: list[str], batch_size: str) -> str:
    """Identity of an evaluation: the same command on the same model gives the same key."""
    identity = {"model": source_identity(source), "attacks": specs,
                "eps": round(plan.eps, 10), "norm": plan.norm, "n": plan.n, "seed": plan.seed,
                "mode": plan.mode, "dataset": plan.dataset, "batch_size": batch_size}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def find_batch_size(model: nn.Module, sample: Tensor, labels: Tensor, limit: int) -> int:
    """The largest batch (halving from a start) whose forward+backward fits in GPU memory."""
    if sample.device.type != "cuda":
        return min(CPU_BATCH_SIZE, limit)
    size = min(GPU_START_BATCH_SIZE, limit)
    while size >= 1:
        try:
            images = sample[:1].expand(size, *sample.shape[1:]).clone().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(images), labels[:1].expand(size))
            torch.autograd.grad(loss, images)
            return size
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            size //= 2
    raise RobevalError("not even one image fits in GPU memory: use --device cpu")


def attack_points(attack: Attack, model: nn.Module, images: Tensor, labels: Tensor,
                  seed: int, chunk: int) -> tuple[list, int]:
    """Run `attack` in chunks of at most `chunk` points, halving the chunk on GPU OOM."""
    while True:
        try:
            outcomes = [attack.run(model, images[i:i + chunk], labels[i:i + chunk], seed + i)
                        for i in range(0, len(images), chunk)]
            return outcomes, chunk
        except torch.cuda.OutOfMemoryError as err:
            if chunk == 1:
                raise RobevalError(f"{attack.spec} runs out of GPU memory even on one image at a "
                                   "time: free the GPU or use --device cpu") from err
            torch.cuda.empty_cache()
            chunk //= 2


@dataclass
class BatchOutcome:
    """Everything one batch adds to the store, and what the engine learnt about the model."""

    samples: list[SampleRow]
    rows: list[OutcomeRow]
    seconds: dict[int, float]         # attack time per suite position
    passes: dict[int, Passes]         # image-passes per suite position
    clean: Passes                     # image-passes of the clean classification
    notes: dict[int, dict]            # per position: gate, unconfirmed breaks, projection, majority
    chunk: int                        # points per attack call that fitted in memory
    random: bool = False              # verdicts needed the majority of several passes
    corruptions: CorruptionBatch = field(default_factory=CorruptionBatch)  # predictions per condition

    def write(self, store: ResultsStore, run_id: int, batch: int) -> None:
        """Commit the batch to `store`."""
        store.write_batch(run_id, batch, self.samples, self.rows, self.seconds, self.passes,
                          self.clean, self.notes, self.corruptions)


def evaluate_batch(model: GuardedModel, attacks: list[Attack], images: Tensor, labels: Tensor,
                   first_index: int, batch: int, plan: ResolvedEval, chunk: int,
                   majority: bool = False, corruptions: CorruptionSuite | None = None) -> BatchOutcome:
    """Clean predictions and every attack's verified per-sample outcome, time and passes; then,
    with `corruptions`, every image's prediction under each corruption condition.

    Each attack sees the model through a `PassCounter`, so its image-passes are counted whatever
    it does; the clean classification is counted on its own. Every outcome is verified by a fresh
    forward pass (`robeval.attacks.verify`); when that shows the model's outputs to be random,
    the batch is judged again from the start with majority verdicts (`majority`).
    """
    outcome = _evaluate_batch(model, attacks, images, labels, first_index, batch, plan, chunk, majority,
                              corruptions)
    if outcome is None:
        outcome = _evaluate_batch(model, attacks, images, labels, first_index, batch, plan, chunk, True,
                                  corruptions)
    return outcome


def _evaluate_batch(model: GuardedModel, attacks: list[Attack], images: Tensor, labels: Tensor,
                    first_index: int, batch: int, plan: ResolvedEval, chunk: int,
                    majority: bool, corruptions: CorruptionSuite | None = None) -> BatchOutcome | None:
    """One try at `evaluate_batch`; None when the outputs proved random and majority was off."""
    counter = PassCounter(model).train(model.training)
    threat = ThreatModel(plan.eps, plan.norm)
    with torch.no_grad():
        clean_pred = majority_logits(counter, images, labels)[0] if majority else counter(images).argmax(1)
    clean = Passes(*counter.take())
    clean_correct = clean_pred == labels
    still_robust = clean_correct.clone()
    indices = range(first_index, first_index + len(labels))
    samples = [SampleRow(i, int(y), int(p)) for i, y, p in zip(indices, labels.tolist(),
                                                                clean_pred.tolist(), strict=True)]
    rows, seconds, passes, notes = [], {}, {}, {}
    for position, attack in enumerate(attacks):
        targets = (still_robust if plan.mode == "cascade" else clean_correct).nonzero().flatten()
        started = time.perf_counter()
        results, chunk = attack_points(attack, counter, images[targets], labels[targets],
                                       batch_seed(plan.seed, batch, position), chunk)
        checked = [verify(counter, result, images[targets[i:i + chunk]], labels[targets[i:i + chunk]],
                          threat, majority) for i, result in zip(range(0, len(targets), chunk), results,
                                                                 strict=True)]
        if any(item.random for item in checked):
            return None
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        seconds[position] = time.perf_counter() - started
        passes[position] = Passes(*counter.take())
        notes[position] = batch_notes(checked, majority)
        verified = [item.outcome for item in checked]
        rows.extend(outcome_rows(first_index, len(labels), position, targets, verified))
        if verified:
            survived = torch.cat([result.robust for result in verified]).to(targets.device)
            still_robust[targets[~survived]] = False
    corrupted = corruption_batch(counter, corruptions, images, labels, first_index, plan.seed, majority)
    return BatchOutcome(samples, rows, seconds, passes, clean, notes, chunk, majority, corrupted)


def corruption_batch(counter: PassCounter, corruptions: CorruptionSuite | None, images: Tensor,
                     labels: Tensor, first_index: int, seed: int, majority: bool) -> CorruptionBatch:
    """Every image's prediction under each corruption condition, as the store takes them (empty
    without corruptions). Not an attack: every image counts, clean-correct or not, and nothing
    here touches the adversarial outcomes."""
    batch = CorruptionBatch()
    if corruptions is None:
        return batch
    for condition in evaluate_corruptions(counter, corruptions, images, labels, first_index, seed, majority):
        batch.rows += [CorruptionRow(first_index + local, condition.position, int(predicted), float(margin))
                       for local, (predicted, margin) in enumerate(zip(condition.predictions.tolist(),
                                                                       condition.margins.tolist(),
                                                                       strict=True))]
        batch.seconds[condition.position] = condition.seconds
        batch.passes[condition.position] = Passes(*condition.passes)
    return batch


def batch_notes(checked: list[Verified], majority: bool) -> dict:
    """What verifying one attack's chunks found, and the gate it ran (JSON-ready)."""
    notes = {"unconfirmed": sum(item.unconfirmed for item in checked),
             "projected": sum(item.projected for item in checked), "majority": majority}
    gates = [item.outcome.notes["gate"] for item in checked if "gate" in item.outcome.notes]
    if gates:
        flags = list(dict.fromkeys(flag for gate in gates for flag in gate["flags"]))
        notes["gate"] = {"points": sum(gate["points"] for gate in gates),
                         "fired": any(gate["fired"] for gate in gates), "flags": flags}
    return notes


def outcome_rows(first_index: int, size: int, position: int, targets: Tensor,
                 results: list) -> list[OutcomeRow]:
    """One row per sample of the batch: attacked points get their outcome, others 'skipped'."""
    attacked = {}
    offset = 0
    for result in results:
        iterations = result.iterations
        for j in range(len(result.robust)):
            attacked[int(targets[offset + j])] = OutcomeRow(
                0, position, "robust" if bool(result.robust[j]) else "broken",
                float(result.margin[j]), float(result.perturbation_norm[j]),
                None if iterations is None else int(iterations[j]))
        offset += len(result.robust)
    rows = []
    for local in range(size):
        row = attacked.get(local) or OutcomeRow(0, position, "skipped", None, None, None)
        row.index = first_index + local
        rows.append(row)
    return rows


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode, on the device, parameters frozen so attacks never accumulate gradients."""
    check_materialised(model, type(model).__name__)
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def evaluate(source: ModelSource, config: EvalConfig, store: ResultsStore | None,
             fresh: bool = False, progress: bool = True, log: Callable[[str], None] = print,
             world: World | None = None) -> EvalResult:
    """Evaluate `source.model` against `config.suite`; outcomes go to `store` batch by batch.

    Under torchrun every rank calls this (only rank 0 needs a `store`): the unfinished batches
    are dealt out round-robin, each rank attacks its own, and rank 0 gathers and writes the
    outcomes, which are the same per sample as a single process's because batches and their
    seeds do not depend on the number of ranks.
    """
    world = world or current()
    log = main_only(log, world)
    plan = resolve(config, source)
    device = rank_device(resolve_device(config.device), world)
    items = parse_suite(plan.suite, ThreatModel(plan.eps, plan.norm))
    attacks, corruptions = split_suite_items(items)
    attacks = gated(attacks)
    test = load_test_set(plan.dataset, plan.data_dir, plan.n)
    info = dataset_info(plan.dataset)
    if tuple(test.images.shape[1:]) != (info.channels, info.image_size, info.image_size):
        raise RobevalError(f"test images of {plan.dataset} have shape {tuple(test.images.shape[1:])}")
    images, labels = test.images.to(device), test.labels.to(device)
    model = guarded(prepare_model(source.model, device), source)
    specs = [item.spec for item in items]
    run_id, batch_size, todo, n_done = on_main(
        lambda: open_evaluation(source, config, plan, specs, store, model, images, labels,
                                device, fresh, log, corruptions), world)
    run_batches(model, attacks, images, labels, plan, store, run_id, batch_size, todo, n_done,
                world=world, progress=progress, scale=255, corruptions=corruptions)
    result = None
    if world.is_main:
        result = conclude(model, store, run_id, images[:CHECK_IMAGES].float() / 255, labels[:CHECK_IMAGES],
                          plan, config.checks and bool(attacks), n_done, log)
    barrier(world)
    return result or EvalResult(run_id, store, None, n_done)


def conclude(model: GuardedModel, store: ResultsStore, run_id: int, check_images: Tensor,
             check_labels: Tensor, plan: ResolvedEval, checks: bool, n_done: int,
             log: Callable[[str], None]) -> EvalResult:
    """After the last batch: the cheap masking checks (if asked), what the engine noticed about
    the model, the run marked finished, and the result."""
    found, notes = [], {}
    if checks:
        found = run_cheap_checks(model, check_images, check_labels, plan)
        notes["checks"] = {check.name: asdict(check) for check in found}
    if model.mutates_input:
        notes["mutates_input"] = True
        log(mutation_warning(model.name))
    if notes:
        store.set_notes(run_id, notes)
    store.finish_run(run_id)
    corruptions = store.corruption_summary(run_id)
    return EvalResult(run_id, store, store.summary(run_id), n_done, found, store.attack_notes(run_id),
                      None if corruptions.empty else corruptions)


def run_batches(model: GuardedModel, attacks: list[Attack], images: Tensor, labels: Tensor,
                plan: ResolvedEval, store: ResultsStore, run_id: int, batch_size: int, todo: list[int],
                n_done: int = 0, world: World | None = None, progress: bool = False,
                scale: float = 1.0, corruptions: CorruptionSuite | None = None) -> None:
    """The evaluation loop: attack the batches `todo` (and corrupt them, with `corruptions`) and
    commit each to `store` as it finishes.

    `images / scale` are the images in [0,1] (255 for uint8 test sets). Under torchrun the
    batches are dealt out round-robin and rank 0 writes them. Once a batch shows the model's
    outputs to be random, every later batch is judged by majority verdicts from the start.
    """
    world = world or current()
    n_batches = -(-len(labels) // batch_size)
    chunk, majority = batch_size, False
    bar = tqdm(total=n_batches, initial=n_done, desc="batches", unit="batch",
               disable=not (progress and world.is_main))
    for first in range(0, len(todo), world.size):
        mine = todo[first + world.rank] if first + world.rank < len(todo) else None
        finished = None
        if mine is not None:
            start = mine * batch_size
            x = images[start:start + batch_size].float() / scale
            y = labels[start:start + batch_size]
            with contract_kept(model.name, mine, start, len(y)):
                outcome = evaluate_batch(model, attacks, x, y, start, mine, plan, chunk, majority,
                                         corruptions)
            chunk, majority = outcome.chunk, majority or outcome.random
            finished = (mine, outcome)
        for batch_result in gather(finished, world) or []:
            if batch_result is not None:
                batch_index, outcome = batch_result
                outcome.write(store, run_id, batch_index)
                bar.update()
    bar.close()


def gated(attacks: list[Attack]) -> list[Attack]:
    """The attacks, each one that has a masking gate (aa-fast) handed robeval's."""
    for attack in attacks:
        if hasattr(attack, "gate"):
            attack.gate = masking_gate
    return attacks


def guarded(model: nn.Module, source: ModelSource) -> GuardedModel:
    """The prepared model behind the output contract of `robeval.attacks.guard`."""
    return GuardedModel(model, source.num_classes, source.name)


@contextlib.contextmanager
def contract_kept(name: str, batch: int, start: int, size: int) -> Iterator[None]:
    """A breach of the model's output contract in the block, reported as one line naming the
    batch; nothing of the batch is stored."""
    try:
        yield
    except ModelContractError as err:
        raise ModelContractError(f"{err} (batch {batch}, test images {start}..{start + size - 1}); "
                                 f"no result of {name} is shown for this evaluation") from None


def mutation_warning(name: str) -> str:
    """The line that says a model changes its input in place."""
    return (f"warning: {name} changes its input tensor in place; robeval gave it a private copy on "
            "every call, so the numbers are those of the function it computes")


def open_evaluation(source: ModelSource, config: EvalConfig, plan: ResolvedEval,
                    specs: list[str], store: ResultsStore, model: nn.Module, images: Tensor,
                    labels: Tensor, device: torch.device, fresh: bool,
                    log: Callable[[str], None],
                    corruptions: CorruptionSuite | None = None) -> tuple[int, int, list[int], int]:
    """Find or open the run in the store: (run id, batch size, batches to do, batches done).

    `specs` are the suite's items in order (they key the run); the corruptions item among them
    is stored as its conditions, the rest as the run's attacks."""
    requested = str(config.batch_size)
    key = run_key(source, plan, specs, requested)
    run_id = store.find_run(key)
    batch_size = None if run_id is None or fresh else store.run_record(run_id).batch_size
    if batch_size is None:
        batch_size = (find_batch_size(model, images[:1].float() / 255, labels[:1], len(labels))
                      if requested == "auto" else int(requested))
    record = RunRecord(model=source.name, checkpoint_hash=source.checkpoint_hash,
                       config={"eval": asdict(config) | {"eps": plan.eps, "norm": plan.norm,
                                                         "dataset": plan.dataset},
                               "model": source.config,
                               "source": {"kind": source.kind, "path": source.path}},
                       dataset=plan.dataset, n=len(labels), eps=plan.eps, norm=plan.norm,
                       seed=plan.seed, batch_size=batch_size, mode=plan.mode,
                       attacks=[spec for spec in specs if corruptions is None or spec != corruptions.spec],
                       versions=library_versions(), device=str(device), git_commit=git_commit(),
                       corruptions=[] if corruptions is None else corruptions.conditions)
    run_id = store.open_run(key, record, fresh=fresh)
    done = store.done_batches(run_id)
    n_batches = -(-len(labels) // batch_size)
    if done:
        log(f"resuming: {len(done)} of {n_batches} batches already in {store.path}")
    todo = [batch for batch in range(n_batches) if batch not in done]
    return run_id, batch_size, todo, n_batches - len(todo)


def run_cheap_checks(model: nn.Module, images: Tensor, labels: Tensor, plan: ResolvedEval) -> list:
    """The cheap gradient-masking checks on the first images of the evaluation."""
    return run_checks(model, images, labels, eps=plan.eps, norm=plan.norm, seed=plan.seed,
                      names="cheap")


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width table: accuracy with its 95% interval, time and passes.

    passes/image is (forward + backward) image-passes ÷ images of the run, with the forward and
    backward parts beside it: the cost figure that does not depend on the hardware.
    """
    n = summary["n"].where(summary["n"] > 0)
    table = pd.DataFrame({
        "accuracy (%)": (100 * summary["accuracy"]).map("{:.2f}".format),
        "95% CI": [f"[{100 * lo:.1f}, {100 * hi:.1f}]"
                   for lo, hi in zip(summary["ci_low"], summary["ci_high"], strict=True)],
        "n": summary["n"],
        "time (s)": summary["seconds"].map(lambda s: "-" if pd.isna(s) else f"{s:.1f}"),
        "passes/image": summary["passes_per_image"].map(_format_passes),
        "fwd/image": (summary["forward_passes"] / n).map(_format_passes),
        "bwd/image": (summary["backward_passes"] / n).map(_format_passes),
    }, index=summary.index)
    return table.to_string()


def _format_passes(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:.1f}"


def corruption_json(summary: pd.DataFrame) -> list[dict]:
    """The corruption summary as JSON-ready rows: one per (type, severity), then the mean over all."""
    rows = json.loads(summary.reset_index().to_json(orient="records"))
    mean = corruption_table(summary).loc["mean", "mean"]
    return rows + [{"corruption": "mean", "severity": None, "accuracy": float(mean)}]


def format_corruptions(summary: pd.DataFrame) -> str:
    """The corruption accuracy (%) per type and severity, with the means and passes per image,
    as a fixed-width table, and a line with the mean over all types and severities."""
    table = corruption_table(summary)
    shown = table.map(lambda value: f"{100 * value:.2f}")
    passes = summary.groupby(level="corruption", sort=False)["passes_per_image"].sum(min_count=1)
    shown["passes/image"] = [_format_passes(passes.get(name, float("nan"))) for name in table.index[:-1]] \
        + [_format_passes(summary["passes_per_image"].sum(min_count=1))]
    types, severities = len(table) - 1, len(table.columns) - 1
    n = int(summary["n"].iloc[0])
    return (f"common corruptions (accuracy %, not an attack: kept out of the worst case)\n"
            f"{shown.to_string()}\n"
            f"corruption accuracy: {100 * table.loc['mean', 'mean']:.2f}% (mean over {_count(types, 'type')} "
            f"x {_count(severities, 'severity', 'severities')}, {n} images each)")


def _count(number: int, one: str, many: str | None = None) -> str:
    return f"{number} {one if number == 1 else many or one + 's'}"
