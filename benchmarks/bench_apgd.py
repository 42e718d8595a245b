"""robeval's APGD against pyautoattack's, and `aa-fast` against `aa`, on two cnn-small models.

1. Per-sample confusion of robeval's `apgd-ce` / `apgd-t` and pyautoattack's
   (`pyautoattack-apgd-ce` / `pyautoattack-apgd-t`) on the same clean-correct test images with
   the same seed: points both broke, only one broke, neither broke; and the model passes per
   image each spent (images × forward passes plus images × backward passes, counted at the
   model).
2. `aa-fast` against `aa` on the first `--aa-n` images: robust accuracy, passes per image,
   time, and the points `aa` breaks that `aa-fast` leaves standing.

Models: cnn-small trained for `--epochs` on cifar10-mini without an adversary (attacked at
ε=`--eps-standard`, small enough that not every point breaks) and with PGD-1 at 8/255 (attacked
at 8/255); trained once into `--work` and reused. Results go to BENCHMARKS.md.

    OMP_NUM_THREADS=1 python benchmarks/bench_apgd.py --data-dir ../shared/data/cifar10-mini
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from markdown import device_label, write_section  # noqa: E402

from robeval.attacks import ThreatModel, build_attack  # noqa: E402
from robeval.data import load_test_set  # noqa: E402
from robeval.evaluate import gated  # noqa: E402
from robeval.runs import load_model  # noqa: E402
from robeval.spec import parse_eps  # noqa: E402
from robeval.train import resolve_config, resolve_device, train  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2]
                                                  / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "robeval-bench-apgd"),
                        help="folder for the trained models (reused when present)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n", type=int, default=500, help="test images of the APGD comparison")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--targets", type=int, default=3, help="target classes of apgd-t")
    parser.add_argument("--aa-n", type=int, default=100, help="test images of aa vs aa-fast (0: skip)")
    parser.add_argument("--eps-standard", type=parse_eps, default=1 / 255)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser.parse_args(argv)


class Counting(nn.Module):
    """Counts images through the model forward and back (images × passes)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.passes = net, 0

    def forward(self, x: Tensor) -> Tensor:
        n = len(x)
        self.passes += n
        out = self.net(x)
        if out.requires_grad:
            out.register_hook(lambda grad: self._backward(n))
        return out

    def _backward(self, n: int) -> None:
        self.passes += n


def model_for(args, name: str, method: str, device: torch.device) -> nn.Module:
    """A cnn-small trained with `method` (standard or pgd), cached in `--work/name`."""
    folder = Path(args.work) / name
    if not (folder / "last.pt").is_file():
        overrides = {"data": {"dataset": "cifar10", "data_dir": args.data_dir},
                     "adversary": {"method": method}, "epochs": args.epochs, "device": str(device),
                     "seed": args.seed}
        train(resolve_config("ci-small", overrides=overrides), folder, progress=False,
              log=lambda _: None)
    model = load_model(folder, device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def clean_correct(model: nn.Module, n: int, args, device: torch.device) -> tuple[Tensor, Tensor]:
    """The clean-correct points among the first n test images."""
    test = load_test_set("cifar10", args.data_dir, n)
    images, labels = test.images.to(device).float() / 255, test.labels.to(device)
    with torch.no_grad():
        keep = model(images).argmax(1) == labels
    return images[keep], labels[keep]


def measured(model: nn.Module, spec: str, eps: float, images: Tensor, labels: Tensor, seed: int):
    """(broken mask, passes per image, seconds, the outcome's notes) of one attack."""
    counting = Counting(model)
    (attack,) = gated([build_attack(spec, ThreatModel(eps))])
    started = time.perf_counter()
    outcome = attack.run(counting, images, labels, seed)
    seconds = time.perf_counter() - started
    return ~outcome.robust.cpu(), counting.passes / max(len(labels), 1), seconds, outcome.notes


def confusion(model, label, eps, args, device) -> list[dict]:
    """Rows of the APGD comparison for one model."""
    images, labels = clean_correct(model, args.n, args, device)
    rows = []
    for spec in (f"apgd-ce(iters={args.iters})", f"apgd-t(iters={args.iters},targets={args.targets})"):
        ours, our_passes, our_seconds, _ = measured(model, spec, eps, images, labels, args.seed)
        theirs, their_passes, their_seconds, _ = measured(model, f"pyautoattack-{spec}", eps, images,
                                                          labels, args.seed)
        rows.append({"model": label, "eps": eps, "attack": spec, "points": len(labels),
                     "both": int((ours & theirs).sum()), "only_ours": int((ours & ~theirs).sum()),
                     "only_theirs": int((~ours & theirs).sum()), "neither": int((~ours & ~theirs).sum()),
                     "our_passes": our_passes, "their_passes": their_passes,
                     "our_seconds": our_seconds, "their_seconds": their_seconds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def fast_vs_aa(model, label, eps, args, device) -> dict:
    """aa against aa-fast on the first `--aa-n` test images of one model."""
    n = args.aa_n
    clean, correct = clean_correct(model, args.aa_n, args, device)
    aa, aa_passes, aa_seconds, _ = measured(model, "aa", eps, clean, correct, args.seed)
    fast, fast_passes, fast_seconds, notes = measured(model, "aa-fast", eps, clean, correct, args.seed)
    row = {"model": label, "eps": eps, "n": n, "clean": len(correct) / n,
           "aa": (len(correct) - int(aa.sum())) / n, "aa_fast": (len(correct) - int(fast.sum())) / n,
           "aa_passes": aa_passes * len(correct) / n, "fast_passes": fast_passes * len(correct) / n,
           "aa_seconds": aa_seconds, "fast_seconds": fast_seconds,
           "aa_broken_fast_standing": int((aa & ~fast).sum()), "gate_fired": notes["gate"]["fired"]}
    print(json.dumps(row), flush=True)
    return row


def render(rows: list[dict], fast_rows: list[dict], args, device: torch.device) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        "## APGD: robeval's early-exit APGD against pyautoattack's",
        "",
        f"{device_label(device)}; `benchmarks/bench_apgd.py` (cnn-small, {args.epochs} epochs on "
        f"cifar10-mini; the clean-correct points among the first {args.n} test images; "
        f"{args.iters} iterations, 1 restart, seed {args.seed}; apgd-t on {args.targets} targets). "
        "Confusion of per-sample outcomes (broken by both / only robeval / only pyautoattack / "
        "neither) and model passes per image (images × forward + images × backward).",
        "",
        "| model | ε | attack | points | both | only robeval | only pyautoattack | neither | "
        "agreement | passes/image robeval | pyautoattack | time (s) robeval | pyautoattack |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agree = (r["both"] + r["neither"]) / max(r["points"], 1)
        lines.append(f"| {r['model']} | {r['eps'] * 255:.0f}/255 | `{r['attack']}` | {r['points']} | "
                     f"{r['both']} | {r['only_ours']} | {r['only_theirs']} | {r['neither']} | "
                     f"{100 * agree:.1f}% | {r['our_passes']:.0f} | {r['their_passes']:.0f} | "
                     f"{r['our_seconds']:.1f} | {r['their_seconds']:.1f} |")
    if fast_rows:
        lines += ["", f"`aa-fast` against `aa` on the first {args.aa_n} test images (accuracy over all "
                  "images; passes per test image):", "",
                  "| model | ε | clean | aa | aa-fast | passes/image aa | aa-fast | ratio | time (s) aa | "
                  "aa-fast | broken by aa, standing under aa-fast | masking gate |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in fast_rows:
            lines.append(f"| {r['model']} | {r['eps'] * 255:.0f}/255 | {100 * r['clean']:.1f}% | "
                         f"{100 * r['aa']:.1f}% | {100 * r['aa_fast']:.1f}% | {r['aa_passes']:.0f} | "
                         f"{r['fast_passes']:.0f} | {r['aa_passes'] / max(r['fast_passes'], 1e-9):.1f}× | "
                         f"{r['aa_seconds']:.0f} | {r['fast_seconds']:.0f} | "
                         f"{r['aa_broken_fast_standing']} | {'fired' if r['gate_fired'] else 'quiet'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    models = [("standard", model_for(args, "standard", "standard", device), args.eps_standard),
              ("PGD-1 AT", model_for(args, "pgd1", "pgd", device), 8 / 255)]
    rows, fast_rows = [], []
    for label, model, eps in models:
        rows += confusion(model, label, eps, args, device)
    if args.aa_n:
        for label, model, eps in models:
            fast_rows.append(fast_vs_aa(model, label, eps, args, device))
    body = render(rows, fast_rows, args, device)
    print(body)
    if not args.no_write:
        write_section("apgd", device, body)


if __name__ == "__main__":
    main()
