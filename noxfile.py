"""Every way to run things: `nox -s tests` (the fast default), `nox -s tests_full`, `nox -s tests_slow`,
`nox -s browser`, `nox -s lint`, `nox -s demo`, `nox -s screenshots`, `nox -s bench`, `nox -s regress`,
`nox -s gpu`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def install_robeval(session: nox.Session, *extras: str) -> None:
    """Install robeval (editable) with the given extras into the session's environment."""
    target = f".[{','.join(extras)}]" if extras else "."
    session.install("-e", target)


def run_tests(session: nox.Session, markers: str, *extras: str) -> None:
    """pytest on CPU over the tests `markers` selects; arguments after `--` go to pytest after it
    (e.g. `-k pgd`, or `-m ...` to select otherwise)."""
    install_robeval(session, "test", *extras)
    session.run("pytest", "-m", markers, *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The fast default: every test but the `slow`, `gpu` and `browser` ones (a few minutes on 2 cores)."""
    run_tests(session, "not slow and not gpu and not browser")


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Only the `slow` tests (not `gpu`, not `browser`): with `tests`, the whole CPU suite but the
    browser tests, nothing run twice."""
    run_tests(session, "slow and not gpu and not browser")


@nox.session
def tests_full(session: nox.Session) -> None:
    """The whole CPU suite, slow tests included (everything but `gpu` and `browser`)."""
    run_tests(session, "not gpu and not browser")


@nox.session
def browser(session: nox.Session) -> None:
    """The HTML report opened in headless Chromium (the `browser` tests): sorting, filtering,
    run pages, hostile names. Needs /usr/bin/chromium and /usr/bin/chromedriver (Debian:
    `apt-get install chromium chromium-driver`); without them the tests fail naming the fix."""
    run_tests(session, "browser", "browser")


@nox.session
def screenshots(session: nox.Session) -> None:
    """docs/img/report-leaderboard.png and docs/img/report-run.png: a demo store's HTML report in
    headless Chromium. The store is the quickstart experiment's (trained and attacked under
    .nox/, about 8 minutes on 2 cores the first time) with one more evaluation that runs aa-fast."""
    install_robeval(session, "browser")
    root = Path(session.virtualenv.location) / "demo"
    session.run("robeval", "run", "quickstart", "--root", str(root), "--quiet")
    store = root / "reports" / "quickstart" / "robeval.sqlite"
    session.run("robeval", "attack", str(root / "checkpoints" / "quickstart" / "activation=relu,seed=0"),
                "--suite", "fgsm,pgd10,apgd-ce,aa-fast(iters=20,queries=200)", "--n", "100",
                "--db", str(store), "--quiet")
    site = root / "site"
    session.run("robeval", "report", "--db", str(store), "--format", "html", "--out", str(site),
                "--title", "robeval quickstart: ReLU against GELU under PGD-1")
    session.run("python", "docs/screenshots.py", str(site), "docs/img")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, the tests and the benchmarks; the import-layer contract of
    pyproject.toml (`[tool.importlinter]`: imports flow down the user flow)."""
    session.install("ruff", "import-linter")
    session.run("ruff", "check", "robeval", "tests", "benchmarks", "docs", "noxfile.py")
    session.run("lint-imports")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job: train with PGD-1 on the embedded digits, attack it, report."""
    install_robeval(session)
    session.run("robeval", "train", "--preset", "ci-small", "--out", "checkpoints/quickstart",
                "--force")
    session.run("robeval", "attack", "checkpoints/quickstart", "--suite", "fgsm,pgd10,apgd-ce",
                "--n", "300", *session.posargs)
    session.run("robeval", "report")


@nox.session
def bench(session: nox.Session) -> None:
    """Training cost, attack cost and distributed scaling (benchmarks/bench_*.py) → BENCHMARKS.md.

    Arguments after `--` go to every script (e.g. `--data-dir DIR --device cpu`).
    """
    install_robeval(session, "bench")
    session.run("python", "benchmarks/bench_train.py", *session.posargs)
    session.run("python", "benchmarks/bench_attacks.py", *session.posargs)
    session.run("python", "benchmarks/bench_distributed.py", *session.posargs)
    session.run("python", "benchmarks/bench_aa.py", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: the GPU-marked tests, then the training, attack and AutoAttack-zoo
    benchmarks on CUDA, each writing its "(GPU ...)" section of BENCHMARKS.md (about 8 minutes on
    one H200). Without a visible CUDA device it says so and runs nothing.
    """
    no_device = "no CUDA device is visible; nothing was run"
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        print(no_device)  # before installing anything: torch alone is a large download
        return
    install_robeval(session, "test", "bench")
    visible = session.run("python", "-c", "import torch; print(torch.cuda.is_available())",
                          silent=True)
    if "True" not in str(visible):
        print(no_device)
        return
    session.run("pytest", "-m", "gpu", *session.posargs)
    session.run("python", "benchmarks/bench_train.py", "--device", "cuda", "--amp", "--repeats", "2")
    session.run("python", "benchmarks/bench_attacks.py", "--device", "cuda", "--repeats", "2")
    session.run("python", "benchmarks/bench_aa.py", "--device", "cuda", "--quick")


@nox.session
def regress(session: nox.Session) -> None:
    """The regression check: regress-mini on cifar10-mini against its committed baseline.

    The data folder is $ROBEVAL_CIFAR10_MINI, else ../shared/data/cifar10-mini beside the
    repository; arguments after `--` go to `robeval check` (e.g. `--update` after an intended change).
    The runs are kept under .nox/regress/tmp/regress and rendered as the html leaderboard there.
    """
    install_robeval(session)
    default = Path(__file__).resolve().parent.parent / "shared" / "data" / "cifar10-mini"
    data_dir = os.environ.get("ROBEVAL_CIFAR10_MINI", str(default))
    root = Path(session.create_tmp()) / "regress"
    shutil.rmtree(root, ignore_errors=True)   # the check trains afresh under an empty root
    session.run("robeval", "check", "regress-mini", "--baseline",
                "experiments/baselines/regress-mini.json", "--data-dir", data_dir, "--quiet",
                "--root", str(root), *session.posargs)
    # the regression store rendered as the leaderboard site, so every format is exercised on it
    site = root / "site"
    session.run("robeval", "report", "--db", str(root / "reports" / "regress-mini" / "robeval.sqlite"),
                "--format", "html,md", "--out", str(site))
    if not (site / "index.html").is_file():
        session.error(f"robeval report --format html wrote no {site / 'index.html'}")
