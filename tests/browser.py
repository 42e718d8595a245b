"""Headless Chromium through Selenium for the HTML report's tests and screenshots.

Debian's `chromium` and `chromium-driver` packages (/usr/bin/chromium, /usr/bin/chromedriver),
started with everything that would reach the network turned off, in a fresh profile. The driver
path is always given, so Selenium never looks for (or downloads) one of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path(os.environ.get("ROBEVAL_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("ROBEVAL_CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL = "apt-get install -y chromium chromium-driver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def missing() -> str | None:
    """Why the browser cannot start (what to install), or None when it can."""
    absent = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if absent:
        return (f"{' and '.join(absent)} not found: install them with `{INSTALL}` (as root), or "
                "point ROBEVAL_CHROMIUM and ROBEVAL_CHROMEDRIVER at a Chromium and its driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[browser]' (or run `nox -s browser`)"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator:
    """A Selenium driver of headless Chromium with a window of `width` × `height` pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="robeval-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
