"""The HTML site's style sheet, its one script and the page shell they go into.

Both are inlined in every page, so a page needs no other file but its figures and no network.
Each page carries a Content-Security-Policy that allows exactly this style and this script (by
their SHA-256) and images from the site's own folder, and nothing else: no other script, no
inline event handler, no request to any server, even if a name in the store were to slip past
the escaping. The script reads only the page's own cells (their `data-sort` values and text);
nothing in it is built from the store.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

STYLE = """
:root { --ink: #1d232b; --muted: #5b6673; --line: #d9dee4; --head: #f3f5f8; --accent: #1f5fa8;
        --flag: #a4161a; --flag-bg: #fde8e8; --warn: #8a5a00; --warn-bg: #fff3d6; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
main.wide { max-width: none; }
h1 { font-size: 1.6rem; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
a { color: var(--accent); }
.subtitle, .note, .count { color: var(--muted); }
.note { font-size: 0.88rem; max-width: 72em; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0;
           font-size: 0.9rem; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.controls { display: flex; align-items: center; gap: 12px; margin: 20px 0 10px; }
.controls input { font: inherit; padding: 6px 10px; width: 22em; max-width: 100%;
                  border: 1px solid var(--line); border-radius: 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.88rem; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--head); position: sticky; top: 0; white-space: nowrap; }
th button { font: inherit; font-weight: 600; color: inherit; background: none; border: 0; padding: 0;
            cursor: pointer; }
th button { text-align: inherit; }
th .options { display: block; font-weight: 400; font-size: 0.75rem; color: var(--muted); }
th button::after { content: " \\2195"; color: #9aa4af; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; color: var(--accent); }
th[aria-sort="descending"] button::after { content: " \\25BC"; color: var(--accent); }
td.num, th.num { text-align: right; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef4fb; }
td.best { font-weight: 700; }
td { white-space: nowrap; }
td.model { white-space: normal; min-width: 15em; max-width: 24em; overflow-wrap: anywhere; }
td.provenance { font-size: 0.8rem; color: var(--muted); }
.badge { display: inline-block; padding: 0 6px; border-radius: 4px; font-size: 0.8rem; white-space: nowrap; }
.badge.flag { color: var(--flag); background: var(--flag-bg); }
.badge.ok { color: #2b6a2f; background: #e6f4e7; }
.badge.unfinished { color: var(--warn); background: var(--warn-bg); }
.muted { color: var(--muted); }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.85rem; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      overflow-x: auto; white-space: pre; }
.figures { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 0 28px; }
figure { margin: 8px 0 20px; flex: 1 1 460px; max-width: 720px; }
figure.narrow { flex: 0 1 400px; }
figure.wide { flex: 1 1 100%; max-width: 880px; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 0 32px; }
figcaption { color: var(--muted); font-size: 0.88rem; margin-top: 4px; max-width: 72em; }
td.explain, td.evidence { white-space: normal; }
td.explain { color: var(--muted); font-size: 0.85rem; min-width: 20em; }
"""

SCRIPT = """
(function () {
  "use strict";
  var table = document.getElementById("leaderboard");
  if (!table) { return; }
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var rows = Array.prototype.slice.call(body.rows);
  var count = document.getElementById("count");
  var filter = document.getElementById("filter");

  function value(row, index, numeric) {
    var cell = row.cells[index];
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    if (!numeric) { return raw.trim().toLowerCase(); }
    var number = parseFloat(raw);
    return isNaN(number) ? null : number;
  }

  function compare(a, b, index, numeric, sign) {
    var x = value(a, index, numeric), y = value(b, index, numeric);
    if (x === null || y === null) {
      if (x === y) { return 0; }
      return x === null ? 1 : -1;
    }
    if (x < y) { return -sign; }
    if (x > y) { return sign; }
    return 0;
  }

  function sortBy(index) {
    var header = headers[index];
    var numeric = header.getAttribute("data-type") === "number";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var sign = ascending ? 1 : -1;
    var order = rows.slice().sort(function (a, b) {
      return compare(a, b, index, numeric, sign) ||
        Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order"));
    });
    headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    order.forEach(function (row) { body.appendChild(row); });
  }

  function applyFilter() {
    var words = filter.value.trim().toLowerCase().split(/\\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (row) {
      var text = row.textContent.toLowerCase();
      var keep = words.every(function (word) { return text.indexOf(word) >= 0; });
      row.hidden = !keep;
      shown += keep ? 1 : 0;
    });
    count.textContent = shown + " of " + rows.length + " runs shown";
  }

  headers.forEach(function (header, index) {
    var button = header.querySelector("button");
    if (button) { button.addEventListener("click", function () { sortBy(index); }); }
  });
  filter.addEventListener("input", applyFilter);
  applyFilter();
}());
"""


DASH = "—"


def text(value) -> str:
    """`value` as HTML text on one line: every markup character escaped, line breaks as spaces."""
    return escape(" ".join(str(value).splitlines()), quote=True)


def percent(value: float | None) -> str:
    """A fraction as a percentage with one decimal, or the dash when missing."""
    return DASH if value is None else f"{100 * value:.1f}"


def facts_list(facts: dict[str, str]) -> str:
    """A definition list of (name, value) pairs, both escaped."""
    items = "".join(f"<dt>{text(key)}</dt><dd>{text(value)}</dd>" for key, value in facts.items())
    return f'<dl class="facts">{items}</dl>'


def _sha256(source: str) -> str:
    return base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii")


def content_policy(script: bool) -> str:
    """The page's Content-Security-Policy: this style (and script) by hash, own images, nothing else."""
    scripts = f"'sha256-{_sha256(SCRIPT)}'" if script else "'none'"
    return (f"default-src 'none'; img-src 'self'; style-src 'sha256-{_sha256(STYLE)}'; "
            f"script-src {scripts}; base-uri 'none'; form-action 'none'")


def page(title: str, body: str, script: bool = False, wide: bool = False) -> str:
    """A whole HTML document: `title` (plain text, escaped here) and `body` (HTML, escaped by the
    caller), with the style and, if asked, the leaderboard script inlined; `wide` lets the
    page use the whole window (for the leaderboard)."""
    tail = f"<script>{SCRIPT}</script>\n" if script else ""
    main = '<main class="wide">' if wide else "<main>"
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{escape(content_policy(script))}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"referrer\" content=\"no-referrer\">\n"
            f"<title>{text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"{main}\n"
            f"{body}\n</main>\n{tail}</body>\n</html>\n")
