"""Stock AutoAttack against a fast suite on a zoo of models trained by robeval, counted in passes.

The zoo (`ZOO`) is cnn-small and preact-resnet18, standard and PGD-1-trained, on cifar10-mini,
plus planted models (`PLANTED`): wrappers around a robust zoo model, each with an identity of its
own in the store. The masked one puts it behind 8-bit input quantisation whose gradient is zero,
so gradient attacks are fooled and only a black-box attack finds its true robustness; the others
(benchmarks/planted.py) probe the fast suite's shortcuts: a temperature that fools cross-entropy,
gradients shattered on a third of the inputs only, and decoy classes that MALT ranks first.
Missing zoo models are trained into the cache folder with the `robeval train` commands of
`train_command`; the trained models and the outcomes are kept there, so a rerun trains nothing.

Both sides run through robeval's evaluation engine into one results store in the cache: stock
AutoAttack as the suite `aa` (pyautoattack's standard version), the fast side as the suite of
`--fast-suite`. AutoAttack is slow on CPU, so its runs are resumed from the store (its per-sample
outcomes, time and passes are those measured when it ran); the fast side is run afresh for every
model the run is given. Each model's row is kept in the cache (`ROWS_FILE`) while its checkpoint
stays the same, so `--models` re-measures some models and the table keeps the others' last rows.
For each model the table gives clean and robust accuracy under both, image-passes per
image and time of each, the ratio of passes, and the number of images AutoAttack breaks that
the fast suite leaves standing. Results go to BENCHMARKS.md.

    python benchmarks/bench_aa.py --data-dir ../shared/data/cifar10-mini
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown import device_label, write_section  # noqa: E402
from planted import BRIGHT_THRESHOLD, DecoyClasses, PartialShatter, TemperatureMasked  # noqa: E402

from robeval.checkpoints import atomic_write_text  # noqa: E402
from robeval.device import resolve_device  # noqa: E402
from robeval.evaluate import EvalConfig, evaluate  # noqa: E402
from robeval.results import ResultsStore  # noqa: E402
from robeval.sources import ModelSource, file_sha256, load_source  # noqa: E402

EPS = "8/255"
REFERENCE_SUITE = "aa"
CPU_BATCH = 100   # images per batch on CPU: the unit that an interrupted AutoAttack run resumes at


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo: how robeval trains it and on how many test images it is attacked."""

    name: str
    arch: str
    activation: str
    method: str          # standard | pgd (PGD-1 at ε = 8/255)
    epochs: int
    n: int               # test images on CPU (the first n)
    quick: bool = True   # part of the `--quick` zoo
    cpu_batch: int = CPU_BATCH   # smaller for slow models, so an interrupted `aa` side loses less


ZOO = (
    ZooModel("cnn-relu-std", "cnn-small", "relu", "standard", 10, 200),
    ZooModel("cnn-relu-pgd1", "cnn-small", "relu", "pgd", 15, 200),
    ZooModel("cnn-gelu-std", "cnn-small", "gelu", "standard", 10, 200),
    ZooModel("cnn-gelu-pgd1", "cnn-small", "gelu", "pgd", 15, 200),
    ZooModel("prn18-relu-std", "preact-resnet18", "relu", "standard", 3, 100, quick=False, cpu_batch=25),
    ZooModel("prn18-relu-pgd1", "preact-resnet18", "relu", "pgd", 3, 100, quick=False, cpu_batch=25),
)
MASKED_BASE = "cnn-relu-pgd1"   # the robust model behind the planted ones
MASKED_NAME = f"{MASKED_BASE}-masked"
ROWS_FILE = "rows.json"         # in the cache: the last measured row of each model, per device and suite


class QuantisedZeroGradient(nn.Module):
    """A planted gradient-masking defence: `net(round(255 x) / 255)` with a zero input gradient.

    The forward pass is the network on 8-bit inputs, so a black-box attack sees (almost) the
    robustness of `net`; the input gradient is exactly zero, so gradient attacks get no signal.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        quantised = (torch.round(x * 255) / 255).detach()
        return self.net(x * 0 + quantised)


@dataclass(frozen=True)
class Planted:
    """A planted model of the zoo: `wrap(options)` around the zoo model `base`.

    Its store identity is derived from its base checkpoint's and from `tag` and `options`, so
    changing a constant of the construction starts its outcomes afresh.
    """

    base: str                                   # the zoo model it wraps (checkpoint, settings)
    wrap: Callable[..., nn.Module]              # wrap(net, **options) -> the planted model
    tag: str                                    # names the construction in its identity
    description: str                            # for the report: "<base> <description>"
    options: dict = field(default_factory=dict)

    def build(self, net: nn.Module) -> nn.Module:
        """The planted model around `net`, in eval mode."""
        return self.wrap(net, **self.options).eval()

    def identity(self, base_hash: str) -> str:
        """The store identity of this planted model around the checkpoint with sha256 `base_hash`."""
        options = ",".join(f"{key}={value!r}" for key, value in sorted(self.options.items()))
        tag = f"{self.tag}({options})" if options else self.tag
        return hashlib.sha256(f"{base_hash}:{tag}".encode()).hexdigest()


# Planted models, each listed in the table right after its base, in this order. The constants are
# the ones measured to show each failure on cnn-relu-pgd1 (see benchmarks/planted.py).
PLANTED: dict[str, Planted] = {
    MASKED_NAME: Planted(MASKED_BASE, QuantisedZeroGradient, "quantised-zero-gradient",
                         "behind 8-bit input quantisation with a zero input gradient"),
    f"{MASKED_BASE}-temperature": Planted(
        MASKED_BASE, TemperatureMasked, "temperature-masked",
        "with its logits divided by a temperature that grows with the colour checkerboard energy "
        "of the input (fools cross-entropy, not DLR)", {"strength": 40.0, "power": 1.5}),
    f"{MASKED_BASE}-partial-shatter": Planted(
        MASKED_BASE, PartialShatter, "partial-shatter",
        "with shattered input gradients on its brightest third of inputs only",
        {"threshold": BRIGHT_THRESHOLD, "amplitude": 1e-3, "frequency": 1e5}),
    f"{MASKED_BASE}-decoy": Planted(
        MASKED_BASE, DecoyClasses, "decoy-classes",
        "with its last 3 classes replaced by decoy logits that never win but that MALT ranks first",
        {"decoys": 3, "margin": 20.0, "amplitude": 1.0, "frequency": 1e5, "replace": True}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2]
                                                  / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--fast-suite", default="aa-fast", help="the suite set against `aa`")
    parser.add_argument("--cache", default=str(Path(__file__).resolve().parent / ".cache"),
                        help="folder of the trained zoo and the results store")
    parser.add_argument("--models", help="comma-separated zoo names (default: all, and the planted ones)")
    parser.add_argument("--n", type=int, help="test images per model (default: each model's own)")
    parser.add_argument("--quick", action="store_true",
                        help="the cnn-small models and the planted ones only, at most 200 images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-only", action="store_true", help="train the missing zoo models, then stop")
    parser.add_argument("--cached-only", action="store_true",
                        help="only the models whose `aa` side is already complete in the cache")
    parser.add_argument("--reference-only", action="store_true",
                        help="fill the cache with the `aa` side (e.g. in the background), then stop")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def train_command(model: ZooModel, data_dir: str, out: Path, device: str) -> list[str]:
    """The `robeval train` command that makes `model` (resumable)."""
    method = ["--method", "pgd", "--steps", "1", "--eps", EPS] if model.method == "pgd" else \
        ["--method", "standard"]
    return [sys.executable, "-m", "robeval", "train", "--dataset", "cifar10", "--data-dir", data_dir,
            "--val-size", "200", "--quiet", "--diagnostics-batch", "0", "--val-pgd-steps", "3",
            "--preset", "ci-small", "--model", model.arch, "--activation", model.activation,
            *method, "--epochs", str(model.epochs), "--device", device, "--out", str(out), "--resume"]


def trained(folder: Path, epochs: int) -> bool:
    """Whether the run folder holds a finished training of `epochs` epochs."""
    history = folder / "history.jsonl"
    if not (folder / "best.pt").is_file() or not history.is_file():
        return False
    lines = [line for line in history.read_text().splitlines() if line.strip()]
    return bool(lines) and json.loads(lines[-1])["epoch"] >= epochs


def ensure_trained(model: ZooModel, args, device: torch.device) -> Path:
    """The model's run folder in the cache, trained now if it is missing or unfinished."""
    folder = Path(args.cache) / "zoo" / model.name
    if not trained(folder, model.epochs):
        command = train_command(model, args.data_dir, folder, device.type)
        print(f"training {model.name}: {' '.join(command[2:])}", flush=True)
        subprocess.run(command, check=True)
    return folder


def planted_source(name: str, base: ModelSource) -> ModelSource:
    """The planted model `name` around `base` (its base's source), with an identity of its own."""
    planted = PLANTED[name]
    return replace(base, model=planted.build(base.model), name=name,
                   checkpoint_hash=planted.identity(base.checkpoint_hash), path=None)


def masked_source(base: ModelSource) -> ModelSource:
    """The planted masked model around `base`."""
    return planted_source(MASKED_NAME, base)


def base_name(name: str) -> str:
    """The zoo model whose checkpoint and settings `name` uses (a planted model uses its base's)."""
    return PLANTED[name].base if name in PLANTED else name


def masked_identity(base_hash: str) -> str:
    """The store identity of the masked model around the checkpoint with sha256 `base_hash`."""
    return PLANTED[MASKED_NAME].identity(base_hash)


def current_identity(name: str, cache: Path) -> str | None:
    """The identity the zoo model `name` has now in the cache (None while it is not trained)."""
    checkpoint = cache / "zoo" / base_name(name) / "best.pt"
    if not checkpoint.is_file():
        return None
    digest = file_sha256(checkpoint)
    return PLANTED[name].identity(digest) if name in PLANTED else digest


def planted_on(base: str) -> list[str]:
    """The planted models around the zoo model `base`, in table order."""
    return [name for name, planted in PLANTED.items() if planted.base == base]


def zoo_order(quick: bool) -> list[tuple[str, ZooModel]]:
    """(name, zoo entry) in table order; planted models follow their base and share its entry."""
    order = []
    for m in ZOO:
        if quick and not m.quick:
            continue
        order.append((m.name, m))
        order.extend((name, m) for name in planted_on(m.name))
    return order


def merged_rows(rows: list[dict], args, device: torch.device) -> list[dict]:
    """This run's rows merged into the cache's row file; the table's rows in zoo order.

    A row measured earlier is kept only while it still describes the model in the cache (same
    checkpoint identity, same image count), so `--models` re-measures some and keeps the rest."""
    path = Path(args.cache) / ROWS_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    prefix = f"{device.type}|{args.fast_suite}|"
    for row in rows:
        stored[prefix + row["model"]] = row
    atomic_write_text(path, json.dumps(stored, indent=1, sort_keys=True) + "\n")
    table = []
    for name, entry in zoo_order(args.quick):
        row = stored.get(prefix + name)
        if row and row["n"] == images_for(entry.n, args, device) \
                and row["checkpoint_hash"] == current_identity(name, Path(args.cache)):
            table.append(row)
    return table


def zoo_sources(args, device: torch.device) -> list[tuple[ModelSource, int]]:
    """(source, test images) for each chosen model, training what is missing."""
    chosen = [m for m in ZOO if not args.quick or m.quick]
    names = None if not args.models else set(args.models.split(","))
    if names is not None:
        known = {m.name for m in ZOO} | set(PLANTED)
        unknown = names - known
        if unknown:
            raise SystemExit(f"unknown zoo model {sorted(unknown)[0]!r}; known: {', '.join(sorted(known))}")
    wanted = [m for m in chosen if names is None or m.name in names
              or names.intersection(planted_on(m.name))]
    if args.cached_only:  # nothing is trained: a model not trained yet has no cached `aa` side
        wanted = [m for m in wanted if trained(Path(args.cache) / "zoo" / m.name, m.epochs)]
    folders = {m.name: ensure_trained(m, args, device) for m in wanted}
    if args.train_only:
        return []
    sources = []
    for m in wanted:
        source = load_source(str(folders[m.name]), device=device)
        n = images_for(m.n, args, device)
        if names is None or m.name in names:
            sources.append((source, n))
        sources.extend((planted_source(name, source), n) for name in planted_on(m.name)
                       if names is None or name in names)
    return sources


def images_for(default: int, args, device: torch.device) -> int:
    """Test images of a model: `--n`, else its own (5x on GPU), at most 200 with `--quick`."""
    n = args.n or (default * 5 if device.type == "cuda" else default)
    return min(n, 200) if args.quick else n


def cpu_batch(name: str) -> int:
    """Images per CPU batch for the zoo model `name` (a planted model takes its base's)."""
    return next((m.cpu_batch for m in ZOO if m.name == base_name(name)), CPU_BATCH)


def run_side(source: ModelSource, suite: str, n: int, args, store: ResultsStore, fresh: bool,
             checks: bool = False):
    """One evaluation of `source` under `suite` into `store`: (summary, per-sample frame, the
    engine's notes per attack, the masking flags of the cheap checks when `checks`)."""
    batch_size = cpu_batch(source.name) if resolve_device(args.device).type == "cpu" else "auto"
    config = EvalConfig(suite=suite, eps=8 / 255, norm="linf", n=n, batch_size=batch_size,
                        seed=args.seed, dataset="cifar10", data_dir=args.data_dir,
                        device=args.device, checks=checks)
    result = evaluate(source, config, store, fresh=fresh, progress=False, log=lambda _: None)
    return (result.summary, store.per_sample(result.run_id), store.attack_notes(result.run_id),
            [check.name for check in result.checks if not check.passed])


def reference_cached(store: ResultsStore, source: ModelSource, n: int) -> bool:
    """Whether the store holds a finished `aa` run of this model on n images."""
    runs = store.runs()
    if runs.empty:
        return False
    done = runs[(runs["checkpoint_hash"] == source.checkpoint_hash) & (runs["n"] == n)
                & (runs["status"] == "finished")]
    return any(list(attacks) == [REFERENCE_SUITE] for attacks in done["attacks"])


def compare(source: ModelSource, n: int, args, store: ResultsStore) -> dict:
    """Both sides on one model and what they add up to."""
    print(f"{source.name}: {REFERENCE_SUITE} on {n} images (resumed from the store if done)", flush=True)
    reference, reference_samples, _, _ = run_side(source, REFERENCE_SUITE, n, args, store, fresh=False)
    print(f"{source.name}: {args.fast_suite}", flush=True)
    fast, fast_samples, notes, flags = run_side(source, args.fast_suite, n, args, store, fresh=True,
                                                checks=True)
    ref_total, fast_total = reference.loc["worst case"], fast.loc["worst case"]
    missed = int((~reference_samples["robust"] & reference_samples["clean_correct"]
                  & fast_samples["robust"]).sum())
    extra = int((reference_samples["robust"] & ~fast_samples["robust"]).sum())
    figures = {"clean": reference.loc["clean", "accuracy"],
               "aa": ref_total["accuracy"], "fast": fast_total["accuracy"],
               "aa_fwd": ref_total["forward_passes"] / n, "aa_bwd": ref_total["backward_passes"] / n,
               "fast_fwd": fast_total["forward_passes"] / n, "fast_bwd": fast_total["backward_passes"] / n,
               "aa_s": ref_total["seconds"], "fast_s": fast_total["seconds"]}
    # the engine verifies each attacked point with one forward pass per attack of the suite
    attacked = sum(int((fast_samples[f"outcome_{spec}"] != "skipped").sum()) for spec in notes)
    gates = [note for note in notes.values() if note.gate_batches]
    gate = ("opened: " + ", ".join(sorted({f for note in gates for f in note.gate_flags}))
            if any(note.gate_fired for note in gates) else "shut" if gates else "none")
    return {"model": source.name, "checkpoint_hash": source.checkpoint_hash, "n": n,
            **{key: float(value) for key, value in figures.items()}, "missed": missed, "extra": extra,
            "verify_fwd": attacked / n, "gate": gate,
            "flags": sorted(set(flags))}


def report(rows: list[dict], args, device: torch.device) -> str:
    """The BENCHMARKS.md section: one row per model."""
    lines = [
        f"## Stock AutoAttack against `{args.fast_suite}` on the zoo ({device_label(device)})",
        "",
        f"L∞, ε = 8/255, first n cifar10-mini test images, seed {args.seed}; `aa` is pyautoattack's "
        "standard version. Passes are image-passes through the model per test image (forward + "
        "backward, clean pass not included), counted by the evaluation engine; time is the "
        "attack time on this machine (the `aa` side as measured when it ran, shared CPU). "
        "*aa-only* is the number of images `aa` breaks that the fast suite leaves standing; "
        "*fast-only* the converse. *Verification* is the engine's fresh forward pass on every "
        "example an attack returns (one per attacked point), counted in the fast passes; *gate* "
        "is whether aa-fast's masking gate stayed shut or which checks opened it; *cheap checks* the "
        "flags of the gradient-masking checks `robeval attack` runs after the suite.",
        "",
        f"| model | n | clean | `aa` | `{args.fast_suite}` | `aa` passes/img (fwd+bwd) | "
        f"fast passes/img (fwd+bwd) | pass ratio | `aa` time (s) | fast time (s) | aa-only | fast-only | "
        "verification passes/img (share of fast) | gate | cheap checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        aa_passes, fast_passes = r["aa_fwd"] + r["aa_bwd"], r["fast_fwd"] + r["fast_bwd"]
        ratio = aa_passes / fast_passes if fast_passes else float("nan")
        lines.append(
            f"| {r['model']} | {r['n']} | {100 * r['clean']:.1f}% | {100 * r['aa']:.1f}% | "
            f"{100 * r['fast']:.1f}% | {aa_passes:.0f} ({r['aa_fwd']:.0f}+{r['aa_bwd']:.0f}) | "
            f"{fast_passes:.0f} ({r['fast_fwd']:.0f}+{r['fast_bwd']:.0f}) | {ratio:.1f}× | "
            f"{r['aa_s']:.0f} | {r['fast_s']:.0f} | {r['missed']} | {r['extra']} | "
            f"{verification(r, fast_passes)} | {r.get('gate', '?')} | {flag_cell(r)} |")
    flags = "".join(f" --{flag}" for flag in ("quick",) if args.quick) + (f" --n {args.n}" if args.n else "")
    lines += ["", f"`python benchmarks/bench_aa.py --fast-suite '{args.fast_suite}'{flags} "
              f"--device {device.type}`; each row is the last measurement of that model, kept in "
              f"the cache's {ROWS_FILE} (`--models` re-measures the models named and keeps the other rows; "
              "a model whose `aa` side is not complete yet has no row); the zoo's training "
              "commands are `train_command` in the script. Planted models (`PLANTED` in the script, "
              "constructions in benchmarks/planted.py): "
              + "; ".join(f"{name} is {p.base} {p.description}" for name, p in PLANTED.items()) + "."]
    return "\n".join(lines)


def flag_cell(row: dict) -> str:
    """The masking flags the cheap checks raised on the model, or `none`."""
    if "flags" not in row:
        return "?"
    return ", ".join(row["flags"]) or "none"


def verification(row: dict, fast_passes: float) -> str:
    """The engine's verification passes per image and their share of the fast suite's passes."""
    if "verify_fwd" not in row:
        return "?"
    share = row["verify_fwd"] / fast_passes if fast_passes else float("nan")
    return f"{row['verify_fwd']:.2f} ({100 * share:.1f}%)"


def main(argv=None) -> str:
    args = parse_args(argv)
    device = resolve_device(args.device)
    sources = zoo_sources(args, device)
    if args.train_only:
        return ""
    with ResultsStore(Path(args.cache) / "bench_aa.sqlite") as store:
        if args.reference_only:
            for source, n in sources:
                summary, _ = run_side(source, REFERENCE_SUITE, n, args, store, fresh=False)
                print(f"{source.name}: {REFERENCE_SUITE} {summary.loc['worst case', 'accuracy']:.3f} "
                      f"on {n} images", flush=True)
            return ""
        if args.cached_only:
            sources = [(source, n) for source, n in sources if reference_cached(store, source, n)]
        rows = merged_rows([compare(source, n, args, store) for source, n in sources], args, device)
    body = report(rows, args, device)
    print(body)
    print(pd.DataFrame(rows).to_string())
    if not args.no_write:
        write_section("bench_aa", device, body)
    return body


if __name__ == "__main__":
    main()
