"""`robeval report` end to end: a store from real short runs, every format, checked content."""

from __future__ import annotations

import pytest
from pypdf import PdfReader

from robeval.cli import main
from robeval.evaluate import EvalConfig, evaluate
from robeval.report.build import ReportConfig, build_report
from robeval.results import ResultsStore
from robeval.sources import load_source
from robeval.train import resolve_config, train
from tests.pdf_layout import runs_off_page, squashed

pytestmark = pytest.mark.slow  # every test reads `store`, which trains and attacks a second model


@pytest.fixture(scope="module")
def store(trained_cifar_run, cifar10_mini_dir, tmp_path_factory):
    """Two PGD-1 models on cifar10-mini (ReLU, and GELU trained the same way), attacked alike."""
    root = tmp_path_factory.mktemp("report")
    gelu = resolve_config("ci-small", overrides={
        "data": {"dataset": "cifar10", "data_dir": str(cifar10_mini_dir), "val_size": 200,
                 "train_subset": 2000},
        "model": {"activation": "gelu"}, "epochs": 2})
    train(gelu, root / "gelu", progress=False, log=lambda _: None)
    results = ResultsStore(root / "store.sqlite")
    for run in (trained_cifar_run, root / "gelu"):
        evaluate(load_source(str(run)), EvalConfig(suite="fgsm,pgd10", n=100, batch_size=100,
                                                   data_dir=str(cifar10_mini_dir)),
                 results, progress=False, log=lambda _: None)
    return results


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def test_every_format_holds_the_stored_numbers(store, tmp_path):
    paths = build_report(store, ReportConfig(out=str(tmp_path / "r"), baseline=1))
    assert set(paths) == {"md", "pdf", "tex"}
    relu, gelu = store.summary(1)["accuracy"], store.summary(2)["accuracy"]
    markdown = paths["md"].read_text()
    delta = 100 * (round(gelu["pgd10"], 3) - round(relu["pgd10"], 3))
    sign = "+" if delta >= 0 else "−"
    expected = f"{pct(gelu['pgd10'])} ({sign}{abs(delta):.1f})"
    assert expected in markdown
    best = max(relu["worst case"], gelu["worst case"])
    assert f"**{pct(best)}" in markdown
    assert "cnn-small, relu, pgd" in markdown and "cnn-small, gelu, pgd" in markdown
    latex = paths["tex"].read_text()
    assert "\\toprule" in latex and "\\bottomrule" in latex and pct(relu["clean"]) in latex


def test_pdf_has_title_main_table_figures_and_flags(store, tmp_path):
    paths = build_report(store, ReportConfig(out=str(tmp_path / "r"), formats=("md", "pdf")))
    reader = PdfReader(paths["pdf"])
    figures = sorted(p.stem for p in (tmp_path / "r").glob("*.png"))
    assert {"activations", "training", "gradient-quality", "robust-vs-clean",
            "per-class"} <= set(figures)
    text = [squashed(page.extract_text()) for page in reader.pages]
    assert "robevalreport" in text[0] and "gitcommit" in text[0]
    assert "Table1:Cleanandrobustaccuracy(%)." in text[0]
    for run_id in (1, 2):
        assert all(pct(value) in text[0] for value in store.summary(run_id)["accuracy"].tolist())
    assert "cnn-small,relu,pgd" in text[0] and "cnn-small,gelu,pgd" in text[0]
    for number in range(1, len(figures) + 1):
        assert any(f"Figure{number}:" in page for page in text)
    assert "Gradient-maskingchecks" in text[-1]
    assert len(reader.pages) <= len(figures)    # figures flow with the text, several to a page
    assert all(not runs_off_page(page) for page in reader.pages)
    for name in figures:
        assert (tmp_path / "r" / f"{name}.png").stat().st_size > 5_000


def test_same_store_gives_the_same_report(store, tmp_path):
    first = build_report(store, ReportConfig(out=str(tmp_path / "a")))
    second = build_report(store, ReportConfig(out=str(tmp_path / "b")))
    for fmt in ("md", "tex"):
        assert first[fmt].read_text() == second[fmt].read_text()
    assert first["pdf"].read_bytes() == second["pdf"].read_bytes()


def test_report_command_and_its_errors(store, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["report", "--db", str(store.path), "--out", str(out), "--format", "md"]) == 0
    assert (out / "report.md").is_file() and not (out / "report.pdf").exists()
    assert main(["report", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", "--db", str(store.path), "--format", "docx", "--out", str(out)]) == 2
    assert "unknown report format" in capsys.readouterr().err
    assert main(["report", "--db", str(store.path), "--baseline", "99", "--out", str(out)]) == 2
    assert "--baseline 99" in capsys.readouterr().err
