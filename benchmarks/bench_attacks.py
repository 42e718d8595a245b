"""Attack cost and agreement, as ratios measured in one run on the same model and batch.

1. Our PGD-K against K forward-backward passes (should stay near 1), both at full length
   and as run in evaluation, where broken samples leave the batch early.
2. Our PGD-K against torchattacks' PGD at equal settings: time and robust accuracy.
3. Our `aa` against a direct pyautoattack call: time and robust accuracy.

The model is a cnn-small trained briefly with PGD-1 (or `--checkpoint`); the batch is the first
`--n` test images. Cheap timings are medians of `--repeats` interleaved runs after a warm-up;
AutoAttack runs once each way. Results go to BENCHMARKS.md.

    python benchmarks/bench_attacks.py --data-dir ../shared/data/cifar10-mini
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown import device_label, write_section  # noqa: E402

from robeval.attacks import ThreatModel, build_attack  # noqa: E402
from robeval.data import load_test_set  # noqa: E402
from robeval.device import resolve_device  # noqa: E402
from robeval.runs import load_model  # noqa: E402
from robeval.spec import parse_eps  # noqa: E402
from robeval.train import resolve_config, train  # noqa: E402

REFERENCE_PASSES = 10  # forward-backward passes per timing of the reference


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2]
                                                  / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--checkpoint", help="a robeval run folder or checkpoint (default: train one)")
    parser.add_argument("--epochs", type=int, default=3, help="PGD-1 epochs of the trained model")
    parser.add_argument("--n", type=int, help="test images in the batch (default 256 on CPU, 1000 on GPU)")
    parser.add_argument("--eps", type=parse_eps, default=8 / 255)
    parser.add_argument("--pgd-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def trained_model(args, device: torch.device) -> nn.Module:
    """The model of `--checkpoint`, or a cnn-small trained with PGD-1 for `--epochs`."""
    if args.checkpoint:
        return load_model(args.checkpoint, device)
    overrides = {"data": {"dataset": args.dataset, "data_dir": args.data_dir},
                 "epochs": args.epochs, "device": str(device), "seed": args.seed}
    config = resolve_config("ci-small", overrides=overrides)
    with tempfile.TemporaryDirectory() as folder:
        train(config, folder, progress=False, log=lambda _: None)
        return load_model(folder, device)


def test_batch(args, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first `--n` test images in [0,1] and their labels, on the device."""
    n = args.n or (1000 if device.type == "cuda" else 256)
    test = load_test_set(args.dataset, args.data_dir, n)
    return test.images.to(device).float() / 255, test.labels.to(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Seconds that `fn()` takes (the GPU synchronised on both sides), and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started, result


def forward_backward(model: nn.Module, images: Tensor, labels: Tensor, passes: int) -> None:
    """`passes` times the work of one PGD step: the input gradient of the summed cross-entropy."""
    delta = torch.zeros_like(images, requires_grad=True)
    for _ in range(passes):
        loss = F.cross_entropy(model(images + delta), labels, reduction="sum")
        torch.autograd.grad(loss, delta)


def torchattacks_pgd(model: nn.Module, eps: float, step: float, steps: int, seed: int):
    """torchattacks' PGD with a random start, as a function of (images, labels)."""
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)

    def run(images: Tensor, labels: Tensor) -> Tensor:
        torch.manual_seed(seed)
        return attack(images, labels)

    return run


def pyautoattack_direct(model: nn.Module, images: Tensor, labels: Tensor, eps: float,
                        seed: int) -> Tensor:
    """pyautoattack's standard AutoAttack called directly; returns its per-sample robust flags."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed,
                           device=images.device)
    _, y_adv = adversary.run_standard_evaluation(images, labels, batch_size=len(images))
    return (y_adv == labels).cpu()


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of `images` classified as `labels`."""
    return (model(images).argmax(1) == labels).float().mean().item()


def time_pgd(args, model, images, labels, device) -> dict:
    """Median seconds of the reference pass, our PGD-K (full length and early exit), torchattacks."""
    steps, threat = args.pgd_steps, ThreatModel(args.eps)
    ours = build_attack(f"pgd{steps}", threat)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    # ε = 0 and the model's own predictions as labels: no iterate is ever misclassified, so
    # every sample takes all K steps, with exactly the work of an attack at ε > 0.
    full = build_attack(f"pgd{steps}", ThreatModel(0.0))
    reference = torchattacks_pgd(model, args.eps, ours.step, steps, args.seed)
    runs = {
        "reference": lambda: forward_backward(model, images, labels, REFERENCE_PASSES),
        "full": lambda: full.run(model, images, predicted, args.seed),
        "eval": lambda: ours.run(model, images, labels, args.seed),
        "torchattacks": lambda: reference(images, labels),
    }
    forward_backward(model, images, labels, REFERENCE_PASSES)  # warm-up: kernels, allocator
    build_attack("pgd2", threat).run(model, images, labels, args.seed)
    torchattacks_pgd(model, args.eps, ours.step, 2, args.seed)(images, labels)
    times, results = {name: [] for name in runs}, {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds, results[name] = timed(run, device)
            times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    median["reference"] /= REFERENCE_PASSES
    full_iterations = results["full"].iterations
    if not bool((full_iterations == steps).all()):
        raise RuntimeError("the full-length PGD run stopped early for some samples")
    return {"time": median, "step": ours.step,
            "mean_steps": results["eval"].iterations.float().mean().item(),
            "robust": results["eval"].robust.float().mean().item(),
            "torchattacks_robust": accuracy(model, results["torchattacks"], labels)}


def time_autoattack(args, model, images, labels, device) -> dict:
    """Seconds and robust accuracy of our `aa` and of a direct pyautoattack call (one run each)."""
    ours = build_attack("aa", ThreatModel(args.eps))
    ours_seconds, outcome = timed(lambda: ours.run(model, images, labels, args.seed), device)
    direct_seconds, robust = timed(
        lambda: pyautoattack_direct(model, images, labels, args.eps, args.seed), device)
    return {"ours": ours_seconds, "direct": direct_seconds,
            "robust": outcome.robust.float().mean().item(), "direct_robust": robust.float().mean().item()}


def ratio(numerator: float, denominator: float) -> str:
    """`numerator / denominator` to two decimals, or a dash when the denominator is zero."""
    return f"{numerator / denominator:.2f}" if denominator else "—"


def report(args, device, n: int, clean: float, pgd: dict, aa: dict) -> str:
    """The Markdown section: setup, the two tables and what each ratio means."""
    k, t = args.pgd_steps, pgd["time"]
    per_step, mean_steps = t["reference"], pgd["mean_steps"]
    cost = [
        "| run | time (s) | gradient steps per sample (mean) | time / (K × fwd+bwd) "
        "| time / (steps spent × fwd+bwd) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| one forward+backward pass | {per_step:.4f} | 1 | — | 1.00 |",
        f"| PGD-{k}, full length (ε = 0) | {t['full']:.2f} | {k} | {t['full'] / (k * per_step):.2f} "
        f"| {t['full'] / (k * per_step):.2f} |",
        f"| PGD-{k}, evaluation (early exit) | {t['eval']:.2f} | {mean_steps:.1f} "
        f"| {t['eval'] / (k * per_step):.2f} | {ratio(t['eval'], mean_steps * per_step)} |",
    ]
    agreement = [
        "| robeval | reference | robeval (s) | reference (s) | time ratio | robust acc. robeval "
        "| robust acc. reference |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        f"| `pgd{k}` (early exit) | torchattacks `PGD` | {t['eval']:.2f} | {t['torchattacks']:.2f} "
        f"| {t['eval'] / t['torchattacks']:.2f} | {pgd['robust']:.1%} | {pgd['torchattacks_robust']:.1%} |",
        f"| `pgd{k}`, full length (ε = 0) | torchattacks `PGD` | {t['full']:.2f} "
        f"| {t['torchattacks']:.2f} | {t['full'] / t['torchattacks']:.2f} | — | — |",
        f"| `aa` | pyautoattack `AutoAttack` | {aa['ours']:.1f} | {aa['direct']:.1f} "
        f"| {aa['ours'] / aa['direct']:.2f} | {aa['robust']:.1%} | {aa['direct_robust']:.1%} |",
    ]
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    model = f"`{args.checkpoint}`" if args.checkpoint else f"cnn-small trained {epochs} with PGD-1"
    return "\n".join([
        f"## Attack cost and agreement with reference implementations ({device_label(device)})",
        "",
        f"`python benchmarks/bench_attacks.py` — {model}, the first {n} {args.dataset} test images "
        f"in one batch (clean accuracy {clean:.1%}), L∞ ε = {args.eps * 255:.3g}/255, PGD step "
        f"{pgd['step'] * 255:.3g}/255 with a random start, K = {k}; median of {args.repeats} "
        f"interleaved runs after a warm-up, AutoAttack once each way; torch {torch.__version__}, "
        f"torchattacks {version('torchattacks')}, pyautoattack {version('pyautoattack')}.",
        "",
        *cost,
        "",
        "The reference is one `CE(model(x + δ), y).sum()` and `torch.autograd.grad(loss, δ)` on the "
        f"whole batch (mean of {REFERENCE_PASSES} back-to-back passes), the work of one PGD step. "
        "*Full length* runs PGD-K at ε = 0 with the model's own predictions as labels, so no sample "
        "can break and all take K steps: time / (K × fwd+bwd) is the per-step overhead of our PGD "
        "(it does K + 1 forward passes and keeps the best iterate). *Evaluation* is PGD-K as run by "
        "`robeval attack`: a sample leaves the batch at its first misclassified iterate. *Steps "
        "spent* is the sum of per-sample gradient steps divided by the batch size (samples wrong "
        "when clean spend none), i.e. the number of full-batch passes the work amounts to; time / "
        "(K × fwd+bwd) is then the saving from early exit, and time / (steps spent × fwd+bwd) the "
        "cost per step actually taken, which smaller batches make higher than at full length.",
        "",
        *agreement,
        "",
        "Time ratio is robeval / reference at equal settings (same ε, step, K, random start, batch). "
        "Our PGD counts a sample broken if any iterate is misclassified and stops attacking it; "
        "torchattacks returns the last of its K iterates, whose accuracy is reported, so ours can "
        "only be lower or equal up to random-start noise (within a point is expected). Our `aa` runs "
        "pyautoattack's standard version with the same seed, so both accuracies should be equal and "
        "the time ratio near 1.",
    ])


def main(argv=None) -> str:
    args = parse_args(argv)
    device = resolve_device(args.device)
    model = trained_model(args, device)
    images, labels = test_batch(args, device)
    clean = accuracy(model, images, labels)
    pgd = time_pgd(args, model, images, labels, device)
    aa = time_autoattack(args, model, images, labels, device)
    body = report(args, device, len(images), clean, pgd, aa)
    print(body)
    if not args.no_write:
        write_section("bench_attacks", device, body)
    return body


if __name__ == "__main__":
    main()
