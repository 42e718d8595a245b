"""Where the text of a PDF page lies: every shown run's extent, from its font's glyph widths.

pypdf reports where a run of text starts but not where it ends; the end is the start plus the
advance widths of its glyphs (the CID font's /W array, 2-byte Identity-H codes, as Typst writes
them) and the TJ kerning offsets, scaled by the current transformation.
"""

from __future__ import annotations

import re

from pypdf import PageObject


def _cid_widths(font) -> tuple[dict[int, float], float]:
    """Glyph advance widths (1/1000 em) of a Type0 font, and its default width."""
    descendant = font["/DescendantFonts"][0].get_object()
    entries, widths = list(descendant.get("/W", [])), {}
    index = 0
    while index < len(entries):
        first, following = int(entries[index]), entries[index + 1]
        if isinstance(following, list):
            widths.update({first + k: float(w) for k, w in enumerate(following)})
            index += 2
        else:
            widths.update(dict.fromkeys(range(first, int(following) + 1), float(entries[index + 2])))
            index += 3
    return widths, float(descendant.get("/DW", 1000))


def _advance(items, widths: dict[int, float], default: float, size: float) -> float:
    """The horizontal advance of a TJ array (text space units)."""
    total = 0.0
    for item in items:
        if isinstance(item, (bytes, str)):
            data = getattr(item, "original_bytes", item)
            if isinstance(data, str):
                data = data.encode("latin-1")
            codes = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data) - 1, 2)]
            total += sum(widths.get(code, default) for code in codes) / 1000 * size
        else:
            total -= float(item) / 1000 * size
    return total


def text_runs(page: PageObject) -> list[tuple[float, float, float, float]]:
    """(x start, x end, baseline y, font size as printed) of every text run on the page."""
    fonts = {name: _cid_widths(font.get_object())
             for name, font in page["/Resources"].get("/Font", {}).items()}
    state, runs = {"font": ({}, 1000.0), "size": 0.0}, []

    def before(operator, operands, cm, tm):
        if operator == b"Tf":
            state["font"], state["size"] = fonts[operands[0]], float(operands[1])
        elif operator in (b"TJ", b"Tj"):
            items = operands[0] if operator == b"TJ" else operands[:1]
            advance = _advance(items, *state["font"], state["size"])
            x = cm[0] * tm[4] + cm[2] * tm[5] + cm[4]
            y = cm[1] * tm[4] + cm[3] * tm[5] + cm[5]
            scale = cm[0] * tm[0]
            runs.append((x, x + scale * advance, y, abs(scale) * state["size"]))

    page.extract_text(visitor_operand_before=before)
    return runs


def runs_off_page(page: PageObject, tolerance: float = 0.5) -> list[tuple[float, float, float]]:
    """The text runs that leave the page box (any part of them)."""
    box = page.mediabox
    left, bottom, right, top = (float(v) for v in (box.left, box.bottom, box.right, box.top))
    return [(x0, x1, y) for x0, x1, y, _ in text_runs(page)
            if min(x0, x1) < left - tolerance or max(x0, x1) > right + tolerance
            or not bottom - tolerance <= y <= top + tolerance]


def smallest_text(page: PageObject) -> float:
    """The smallest printed font size of the page's text (points)."""
    return min((size for *_, size in text_runs(page)), default=float("inf"))


def squashed(text: str) -> str:
    """Text without whitespace or zero-width spaces, to compare across line breaks."""
    return re.sub(r"[\s\u200b]+", "", text)
