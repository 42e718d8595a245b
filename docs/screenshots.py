"""Screenshots of the HTML report for the README: one of each page kind, in headless Chromium.

    python docs/screenshots.py SITE OUT

SITE is a folder written by `robeval report --format html`; OUT receives
report-leaderboard.png (SITE/index.html) and report-run.png (the page of the leaderboard's
first run, its top part). `nox -s screenshots` builds a demo site and runs this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests.browser, from a checkout

from tests.browser import chromium, missing  # noqa: E402

WIDTH = 1400
MAX_WIDTH = 2000
MAX_HEIGHT = {"report-leaderboard": 1000, "report-run": 1900}


def capture(driver, out: Path, name: str) -> Path:
    """Resize the window to the page (as wide as the leaderboard, if any, at most `MAX_WIDTH`,
    and at most `MAX_HEIGHT[name]` high) and save a PNG."""
    wide = driver.execute_script("var t = document.getElementById('leaderboard');"
                                 "return t ? t.scrollWidth + 72 : 0;")
    width = min(max(WIDTH, int(wide)), MAX_WIDTH)
    driver.set_window_size(width, 900)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 16, MAX_HEIGHT[name]))
    path = out / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the two screenshots; 2 with a one-line reason when the browser is missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    reason = missing()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with chromium(WIDTH, 900) as driver:
        driver.get((args.site / "index.html").resolve().as_uri())
        print(capture(driver, args.out, "report-leaderboard"))
        driver.get(driver.find_element("css selector", "#leaderboard tbody a").get_attribute("href"))
        print(capture(driver, args.out, "report-run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
