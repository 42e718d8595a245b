"""Training cost, as ratios measured in one run on the same model and data.

1. One PGD-1 training epoch with each smooth activation against the same epoch with ReLU
   (SAT: smooth activations cost nothing extra).
2. PGD-1 training against standard training, both with ReLU (SAT: about 1.5×).

Every configuration is timed `--repeats` times, interleaved so that drift in the machine's
speed hits all of them alike; the median epoch time is reported. Results go to BENCHMARKS.md.

    python benchmarks/bench_train.py --data-dir ../shared/data/cifar10-mini
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown import device_label, write_section  # noqa: E402

from robeval.allocator import tune_cpu_allocator  # noqa: E402
from robeval.data import load_data  # noqa: E402
from robeval.device import resolve_device  # noqa: E402
from robeval.train import resolve_config  # noqa: E402
from robeval.train.loop import make_optimizer, model_for, train_one_epoch  # noqa: E402

SMOOTH = ["softplus", "parametric-softplus", "silu", "gelu", "elu", "celu", "smoothrelu"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2]
                                                  / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--train-subset", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 mixed precision (CUDA only)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def configs(args):
    """(label, config) pairs: PGD-1 per activation, plus standard training with ReLU."""
    base = {"data": {"dataset": args.dataset, "data_dir": args.data_dir, "val_size": 0,
                     "train_subset": args.train_subset},
            "model": {"arch": args.model}, "optim": {"batch_size": args.batch_size},
            "device": args.device, "epochs": 1, "amp": args.amp}
    pairs = []
    for activation in ["relu", *SMOOTH]:
        values = {**base, "model": {"arch": args.model, "activation": activation},
                  "adversary": {"method": "pgd", "steps": 1}}
        pairs.append((("pgd1", activation), resolve_config("ci-small", overrides=values)))
    standard = {**base, "model": {"arch": args.model, "activation": "relu"},
                "adversary": {"method": "standard"}}
    pairs.append((("standard", "relu"), resolve_config("ci-small", overrides=standard)))
    return pairs


def time_epoch(config, data, device) -> float:
    """Seconds for one training epoch of a fresh model."""
    torch.manual_seed(0)
    model = model_for(config, data.info).to(device)
    optimizer = make_optimizer(config, model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    train_one_epoch(model, optimizer, data.train, config, 0, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv=None) -> str:
    args = parse_args(argv)
    tune_cpu_allocator()  # as the CLI does, so the epochs are the trainer's
    pairs = configs(args)
    device = resolve_device(args.device)
    data = load_data(pairs[0][1].data, device)
    time_epoch(pairs[0][1], data, device)  # warm-up: kernels, allocator, caches
    times = {label: [] for label, _ in pairs}
    for _ in range(args.repeats):
        for label, config in pairs:
            times[label].append(time_epoch(config, data, device))
    median = {label: statistics.median(values) for label, values in times.items()}
    relu = median[("pgd1", "relu")]
    rows = ["| training | activation | epoch (s) | ratio |", "| --- | --- | ---: | ---: |"]
    for (method, activation), seconds in median.items():
        if method == "pgd1":
            rows.append(f"| PGD-1 | {activation} | {seconds:.2f} | {seconds / relu:.2f}× ReLU |")
    standard = median[("standard", "relu")]
    rows.append(f"| standard | relu | {standard:.2f} | PGD-1 = {relu / standard:.2f}× standard |")
    body = "\n".join([
        f"## Training cost: smooth activations and PGD-1 ({device_label(device)})",
        "",
        f"`python benchmarks/bench_train.py` — {args.model} on {args.dataset} "
        f"({len(data.train)} training images, batch {args.batch_size}), median of "
        f"{args.repeats} interleaved epochs, torch {torch.__version__}"
        f"{', bf16 mixed precision' if args.amp and device.type == 'cuda' else ''}. The SAT paper reports "
        "that smooth activations add no cost and that PGD-1 training costs about 1.5× standard "
        "training on GPUs; a PGD-1 step is two forward-backward passes, so ≈2× is the "
        "expected ratio where compute dominates.",
        "",
        *rows,
    ])
    print(body)
    if not args.no_write:
        write_section("bench_train", device, body)
    return body


if __name__ == "__main__":
    main()
