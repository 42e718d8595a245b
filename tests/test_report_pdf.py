"""The typeset report PDF: page 1, text kept on the page, wide and long tables, hostile names."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import typst
from matplotlib.figure import Figure
from pypdf import PdfReader

from robeval.errors import RobevalError
from robeval.report import render
from robeval.report.render import Report, Section, write_pdf
from robeval.report.tables import Table
from tests.pdf_layout import runs_off_page, smallest_text, squashed

HOSTILE = [
    "resnet18, elu(α=0.5), pgd_#1 $x$ [a] *b* <c> @d \\ `e` {f} 50% ~^ & \"q\" 'r' =h= -l- +p+",
    "cnn-small, relu, pgd (run 2)",
    "wrn_28_10_with_an_unbroken_name_" * 3,
    "#set page(width: 1cm) #panic(\"no\") $ sum $ // not a comment /* nor this */",
]
PROVENANCE = {"date": "2026-11-30 04:00 UTC", "robeval version": "0.1.0", "git commit": "aa5a482",
              "device": "cuda:0 (NVIDIA #1)", "runs": "1, 2, 3, 4",
              "store": "/very/long/" + "directory_name/" * 12 + "results.sqlite"}


def table(title: str, labels: list[str], columns: list[str], notes: str = "") -> Table:
    """A table of distinct numbers, the best of each column bold."""
    values = np.arange(len(labels) * len(columns), dtype=float).reshape(len(labels), len(columns))
    cells = pd.DataFrame([[f"{10 + v / 7:.1f}" for v in row] for row in values],
                         index=pd.Index(labels, name="model"), columns=columns, dtype=object)
    bold = pd.DataFrame(values == values.max(axis=0), index=cells.index, columns=columns)
    return Table(title, cells, bold, notes)


def figure(label: str) -> Figure:
    fig = Figure(figsize=(6.5, 2.0))
    fig.subplots().plot(range(5), range(5), label=label)
    return fig


def report(tables: list[Table], title: str = "robeval report") -> Report:
    caption = "Training curves_#1: ‖∇ₓL‖₁ and $R(x, δ)$ per epoch."
    return Report(title, PROVENANCE, tables, [Section("curves", caption, figure("relu_#1"))],
                  ["cnn-small (run 1): fgsm-vs-pgd: FGSM accuracy 40% below PGD's #1 $"])


def main() -> Table:
    columns = ["clean", "fgsm", "pgd10", "apgd-ce", "worst case"]
    return table("Clean and robust accuracy (%)", HOSTILE, columns,
                 "Accuracy in %; bold: best of each column. Deltas relative to cnn-small_#1 $ (run 1).")


def pdf_of(rep: Report, tmp_path) -> PdfReader:
    return PdfReader(write_pdf(rep, tmp_path))


def page_texts(reader: PdfReader) -> list[str]:
    return [squashed(page.extract_text()) for page in reader.pages]


def test_first_page_holds_title_provenance_and_the_whole_main_table(tmp_path):
    title = "SAT on CIFAR-10: #smooth $activations$ [mini] <scale> @ 1/10_th"
    reader = pdf_of(report([main(), table("Second", ["relu"], ["clean"])], title), tmp_path)
    first = page_texts(reader)[0]
    assert squashed(title) in first
    for key, value in PROVENANCE.items():
        assert squashed(key) in first and squashed(value) in first
    assert squashed("Table 1: Clean and robust accuracy (%).") in first
    main_table = main()
    for label in main_table.cells.index:
        assert squashed(label) in first
    for value in main_table.cells.to_numpy().ravel():
        assert value in first
    assert squashed(main_table.notes) in first
    assert reader.metadata.title == title
    assert all(not runs_off_page(page) for page in reader.pages)


def test_hostile_names_render_as_written_everywhere(tmp_path):
    sweep = table("Sweep of α_#: $ [x] <y>", ["relu_1", "gelu_#2"], HOSTILE[:1] + ["β=0.5_%"], HOSTILE[3])
    text = "".join(page_texts(pdf_of(report([main(), sweep]), tmp_path)))
    for name in [*HOSTILE, "Sweep of α_#: $ [x] <y>", "β=0.5_%", "Training curves_#1: ‖∇ₓL‖₁ and $R(x, δ)$",
                 "FGSM accuracy 40% below PGD's #1 $", "Gradient-masking checks"]:
        assert squashed(name) in text, name


def test_wide_tables_shrink_or_turn_and_long_ones_flow_on(tmp_path):
    wide = table("Twelve settings", ["relu", "gelu"], [f"α={a / 10:g}, wd=5e-4" for a in range(12)])
    wider = table("Thirty settings", ["relu", "gelu"], [f"setting_{a}_long" for a in range(30)])
    long = table("Eighty models", [f"model {i}" for i in range(80)], ["clean", "pgd"])
    reader = pdf_of(report([main(), wide, wider, long]), tmp_path)
    texts = page_texts(reader)
    assert all(not runs_off_page(page) for page in reader.pages)
    for t in (wide, wider, long):
        for item in [*t.cells.columns, *t.cells.index, *t.cells.to_numpy().ravel()]:
            assert any(squashed(item) in page for page in texts), item
    landscape = [p for p in reader.pages if float(p.mediabox.width) > float(p.mediabox.height)]
    assert len(landscape) == 1 and len(reader.pages) > 1     # the two wide tables share it
    shown = squashed(landscape[0].extract_text())
    assert "Table2:Twelvesettings" in shown and shown.count("gelu") >= 3   # thirty split in blocks
    assert min(smallest_text(page) for page in reader.pages) >= 6.5       # nothing shrunk unreadably
    assert len(reader.pages) <= 8          # flowing, not a page per item
    assert sum("Table4:Eightymodels" in page for page in texts) == 1    # one caption, two pages
    assert sum("model79" in page or "model0" in page for page in texts) == 2


def test_same_report_gives_the_same_bytes(tmp_path):
    first = write_pdf(report([main()]), tmp_path).read_bytes()
    assert write_pdf(report([main()]), tmp_path).read_bytes() == first


def test_a_failed_typesetting_keeps_the_last_pdf(tmp_path, monkeypatch):
    path = write_pdf(report([main()]), tmp_path)
    before = path.read_bytes()

    def broken(_report):
        raise RobevalError("the report PDF could not be typeset")

    monkeypatch.setattr(render, "typeset", broken)
    with pytest.raises(RobevalError, match="could not be typeset"):
        write_pdf(report([main()]), tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["report.pdf"]


def small_page(body: bytes):
    source = b"#set page(width: 6cm, height: 4cm, margin: 1cm)\n" + body
    return PdfReader(io.BytesIO(typst.compile(source, ignore_system_fonts=True))).pages[0]


def test_the_layout_check_sees_text_running_off_a_page():
    assert runs_off_page(small_page(b'#box(width: 2cm, "an_unbreakable_name_far_wider_than_the_box")'))
    assert runs_off_page(small_page(b'#place(dx: 4.8cm, dy: 1cm)[ab]'))
    assert not runs_off_page(small_page(b"short words, set #box(width: 2cm)[at] the edge #h(1fr) end"))
