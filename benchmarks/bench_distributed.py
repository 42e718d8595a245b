"""Scaling with torch.distributed: the same training epoch and evaluation on 1 and on N ranks.

1. A PGD-1 training epoch (DistributedDataParallel, the global batch split over the ranks),
   timed by the trainer itself (history.jsonl), second epoch so start-up is excluded.
2. An evaluation (`robeval attack`, batches dealt out to the ranks), timed end to end,
   process start-up included, since that is what a user waits for.

Both go through the command line exactly as a user runs them (`--nproc N` starts torchrun).
On CPU the cores are shared out: one rank gets all of them as threads, N ranks get
cores / N each. Results go to BENCHMARKS.md.

    python benchmarks/bench_distributed.py --data-dir ../shared/data/cifar10-mini
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown import device_label, write_section  # noqa: E402

from robeval.device import resolve_device  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2]
                                                  / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--model", default="cnn-small")
    parser.add_argument("--train-subset", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n", type=int, default=1000, help="test images attacked")
    parser.add_argument("--suite", default="pgd100")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


def robeval(args: list[str], nproc: int, cores: int) -> float:
    """Run `robeval ARGS` on `nproc` ranks; the wall-clock seconds it took."""
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // nproc)), ROBEVAL_OFFLINE="1")
    command = [sys.executable, "-m", "robeval", *args] + (["--nproc", str(nproc)] if nproc > 1 else [])
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def train_epoch(args, folder: Path, nproc: int, cores: int) -> float:
    """Seconds of the second PGD-1 epoch on `nproc` ranks."""
    out = folder / f"train-{nproc}"
    robeval(["train", "--dataset", "cifar10", "--data-dir", args.data_dir, "--model", args.model,
             "--method", "pgd", "--steps", "1", "--train-subset", str(args.train_subset),
             "--val-size", "256", "--batch-size", str(args.batch_size), "--epochs", "2",
             "--diagnostics-batch", "0", "--device", args.device, "--quiet", "--out", str(out)],
            nproc, cores)
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return rows[-1]["time"]


def evaluation(args, folder: Path, run: Path, nproc: int, cores: int) -> float:
    """Wall-clock seconds of `robeval attack` on `nproc` ranks."""
    return robeval(["attack", str(run / "best.pt"), "--suite", args.suite, "--n", str(args.n),
                    "--batch-size", "64", "--data-dir", args.data_dir, "--device", args.device,
                    "--db", str(folder / f"eval-{nproc}.sqlite"), "--no-checks", "--quiet"],
                   nproc, cores)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        epoch = {n: train_epoch(args, folder, n, cores) for n in (1, args.nproc)}
        run = folder / "train-1"
        evaluate = {n: evaluation(args, folder, run, n, cores) for n in (1, args.nproc)}
    n = args.nproc
    lines = [
        f"## Scaling with torch.distributed: 1 vs {n} ranks ({device_label(device)})", "",
        f"`python benchmarks/bench_distributed.py` — {args.model} on cifar10, torch "
        f"{torch.__version__}, {'gloo' if device.type == 'cpu' else 'NCCL'} backend. Training: "
        f"one PGD-1 epoch over {args.train_subset} images at global batch {args.batch_size} "
        f"(second epoch, as timed by the trainer, validation included). Evaluation: "
        f"`robeval attack --suite {args.suite}` on {args.n} test images in batches of 64, wall "
        f"clock including process start-up. On CPU one rank uses all {cores} cores as threads "
        f"and {n} ranks use {max(1, cores // n)} each, so the ideal speed-up there is the "
        "threading inefficiency recovered, not the number of ranks.", "",
        "| job | 1 rank (s) | " + f"{n} ranks (s) | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| PGD-1 training epoch | {epoch[1]:.2f} | {epoch[n]:.2f} | {epoch[1] / epoch[n]:.2f}× |",
        f"| evaluation ({args.suite}) | {evaluate[1]:.2f} | {evaluate[n]:.2f} | "
        f"{evaluate[1] / evaluate[n]:.2f}× |",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("bench_distributed", device, body)


if __name__ == "__main__":
    main()
