"""`robeval report --format html`: the leaderboard site, opened in headless Chromium.

The store holds real short evaluations of a PGD-1 cnn-small on cifar10-mini: at 8/255 with the
masking checks, at 16/255, under a hostile name with aa-fast, and one left unfinished. The
`browser` tests (`nox -s browser`) click, type and follow links in the pages; they fail, naming
the packages to install, when Chromium or its driver is missing.
"""

from __future__ import annotations

import dataclasses
import html
import re
import shlex
import sqlite3
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from robeval.cli import main
from robeval.evaluate import EvalConfig, evaluate
from robeval.report.build import ReportConfig, build_report
from robeval.report.commands import attack_command, train_command, train_config
from robeval.report.html import run_folder
from robeval.report.html_assets import text
from robeval.report.leaderboard import corruptions_mean
from robeval.results import ResultsStore
from robeval.sources import load_source
from robeval.train import config_to_dict, resolve_config
from tests.browser import chromium, missing

HOSTILE = ("<script>window.pwned = 1</script> & \"q\" 'r' $\\macro$ {x} %\nline2 "
           "<img src=x onerror=\"window.pwned = 2\"> ../../etc")
SHOWN = " ".join(HOSTILE.splitlines())   # names are shown on one line, as in every format
SAFE_FOLDER = re.compile(r"run\d+(-[a-z0-9]+)*-[0-9a-f]{10}")
browser = pytest.mark.browser


# --- the store and the sites ----------------------------------------------------------------

def mark_unfinished(db: Path, run_id: int) -> None:
    """Run `run_id` as if stopped after its first batch."""
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("DELETE FROM batches WHERE run_id = ? AND batch_index = 1", (run_id,))
        connection.execute("UPDATE runs SET status = 'running', finished_at = NULL WHERE id = ?", (run_id,))


@pytest.fixture(scope="module")
def store(trained_cifar_run, cifar10_mini_dir, tmp_path_factory, one_torch_thread):
    """Run 1: fgsm,pgd10 at 8/255 with the masking checks; 2: the same at 16/255; 3: under a
    hostile name with aa-fast; 4: pgd5, stopped after one of its two batches."""
    results = ResultsStore(tmp_path_factory.mktemp("html-store") / "store.sqlite")
    source = load_source(str(trained_cifar_run))
    data = {"data_dir": str(cifar10_mini_dir), "batch_size": 50}
    quiet = {"progress": False, "log": lambda _: None}
    evaluate(source, EvalConfig(suite="fgsm,pgd10", n=100, **data), results, **quiet)
    evaluate(source, EvalConfig(suite="fgsm,pgd10", eps=16 / 255, n=100, checks=False, **data),
             results, **quiet)
    evaluate(dataclasses.replace(source, name=HOSTILE),
             EvalConfig(suite="fgsm,aa-fast(iters=10,queries=100)", n=50, checks=False, **data),
             results, **quiet)
    evaluate(source, EvalConfig(suite="pgd5", n=100, checks=False, **data), results, **quiet)
    mark_unfinished(results.path, 4)
    return results


@pytest.fixture(scope="module")
def site(store, tmp_path_factory) -> Path:
    """The html report of every run, the unfinished one included."""
    out = tmp_path_factory.mktemp("site")
    build_report(store, ReportConfig(out=str(out), formats=("html",), include_unfinished=True))
    return out


@pytest.fixture(scope="session")
def driver():
    """Headless Chromium; a failure that names the fix when it is not installed (session-wide,
    so that it comes before the store is built)."""
    reason = missing()
    if reason:
        pytest.fail(f"the browser tests need Chromium and its driver: {reason}", pytrace=False)
    with chromium() as started:
        yield started


# --- reading the pages ----------------------------------------------------------------------

def open_index(driver, site: Path) -> None:
    driver.get((site / "index.html").as_uri())


def script(driver, code: str):
    return driver.execute_script(code)


def rows(driver, visible_only: bool = False) -> list[int]:
    """Run ids of the leaderboard's rows in their order (the shown ones only, if asked)."""
    return [int(row.find_element("css selector", "td").get_property("textContent"))
            for row in driver.find_elements("css selector", "#leaderboard tbody tr")
            if row.is_displayed() or not visible_only]


def headers(driver) -> list:
    return driver.find_elements("css selector", "#leaderboard thead th")


def column(driver, name: str) -> int:
    names = [header.get_property("textContent") for header in headers(driver)]
    return names.index(name)


def sort_values(driver, index: int) -> list[str]:
    return [row.find_elements("css selector", "td")[index].get_attribute("data-sort")
            for row in driver.find_elements("css selector", "#leaderboard tbody tr")]


def click_header(driver, name: str) -> None:
    headers(driver)[column(driver, name)].find_element("css selector", "button").click()


def type_filter(driver, words: str) -> None:
    box = driver.find_element("id", "filter")
    script(driver, "var box = document.getElementById('filter'); box.value = '';"
                   "box.dispatchEvent(new Event('input'));")
    box.send_keys(words)


def follow(driver, run_id: int) -> None:
    row = driver.find_elements("css selector", "#leaderboard tbody tr")[rows(driver).index(run_id)]
    row.find_element("css selector", "td.model a").click()


def csp_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"]]


def command_words(block: str) -> list[str]:
    """The words of a shown command (continued lines joined)."""
    return shlex.split(block.replace("\\\n", " "))


# --- in the browser -------------------------------------------------------------------------

@browser
def test_the_leaderboard_is_ranked_and_a_header_click_sorts_numbers_as_numbers(driver, site, store):
    open_index(driver, site)
    worst = {run_id: store.summary(run_id)["accuracy"]["worst case"] for run_id in (1, 2, 3)}
    assert rows(driver) == [*sorted(worst, key=lambda run_id: (-worst[run_id], run_id)), 4]
    passes = column(driver, "passes/img")
    click_header(driver, "passes/img")
    values = sort_values(driver, passes)
    numbers = [float(value) for value in values[:-1]]
    assert values[-1] == "" and rows(driver)[-1] == 4          # no number: last either way
    assert numbers == sorted(numbers) and len(numbers) == 3
    assert sorted(values[:-1]) != values[:-1]                  # sorted as text, the order differs
    assert headers(driver)[passes].get_attribute("aria-sort") == "ascending"
    click_header(driver, "passes/img")
    values = sort_values(driver, passes)
    assert [float(value) for value in values[:-1]] == sorted(numbers, reverse=True) and values[-1] == ""
    assert headers(driver)[passes].get_attribute("aria-sort") == "descending"
    assert set(sort_values(driver, column(driver, "corruptions"))) == {""}   # none were run
    click_header(driver, "model")
    names = [row.find_element("css selector", "td.model a").get_property("textContent").lower()
             for row in driver.find_elements("css selector", "#leaderboard tbody tr")]
    assert names == sorted(names)


@browser
def test_the_filter_keeps_the_rows_holding_every_typed_word(driver, site):
    open_index(driver, site)
    count = driver.find_element("id", "count")
    assert count.text == "4 of 4 runs shown"
    type_filter(driver, "16/255")
    assert rows(driver, visible_only=True) == [2] and count.text == "1 of 4 runs shown"
    type_filter(driver, "AA-FAST")
    assert rows(driver, visible_only=True) == [3]
    type_filter(driver, "cifar-relu unfinished")
    assert rows(driver, visible_only=True) == [4]
    type_filter(driver, "no-such-run")
    assert rows(driver, visible_only=True) == [] and count.text == "0 of 4 runs shown"
    type_filter(driver, "")
    assert sorted(rows(driver, visible_only=True)) == [1, 2, 3, 4]


@browser
def test_a_run_page_shows_its_figures_checks_and_the_command_that_reproduces_it(driver, site, store,
                                                                                 trained_cifar_run):
    open_index(driver, site)
    follow(driver, 1)
    assert re.search(r"/runs/run1-[a-z0-9-]+/index\.html$", driver.current_url)
    assert driver.find_element("tag name", "h1").text == "cifar-relu-pgd1"
    for figure in ("per-class", "eps-curve", "training"):
        image = driver.find_element("css selector", f"#{figure} img")
        assert image.get_property("naturalWidth") > 300, figure      # the SVG loaded
    shown = driver.find_element("id", "attack-command").get_property("textContent")
    words = command_words(shown)
    assert words[:3] == ["robeval", "attack", str(trained_cifar_run / "best.pt")]
    for option in (["--suite", "fgsm,pgd10"], ["--eps", "8/255"], ["--n", "100"],
                   ["--batch-size", "50"], ["--db", str(store.path)]):
        assert words[words.index(option[0]) + 1] == option[1]
    train = command_words(driver.find_element("id", "train-command").get_property("textContent"))
    assert train == ["robeval", "train", "--config", "train-config.yaml", "--out", str(trained_cifar_run)]
    checks = store.runs().set_index("id").loc[1, "notes"]["checks"]
    table = driver.find_element("id", "checks").get_property("textContent")
    for name, check in checks.items():
        assert name in table and " ".join(check["explanation"].split()) in " ".join(table.split())
    linked = script(driver, "return Array.from(document.querySelectorAll('[src], [href]'))"
                            ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
    assert linked and not [url for url in linked if "//" in url or ":" in url]   # files beside it
    policy = driver.find_element("css selector", "meta[http-equiv='Content-Security-Policy']")
    assert policy.get_attribute("content").startswith("default-src 'none';")   # and no network
    driver.find_element("link text", "← leaderboard").click()
    assert driver.current_url.endswith("/index.html") and "/runs/" not in driver.current_url


@browser
def test_a_hostile_run_name_is_shown_as_typed_and_runs_nothing(driver, site):
    open_index(driver, site)
    driver.get_log("browser")                 # start from an empty log
    row = driver.find_elements("css selector", "#leaderboard tbody tr")[rows(driver).index(3)]
    link = row.find_element("css selector", "td.model a")
    assert link.get_property("textContent") == SHOWN
    assert script(driver, "return window.pwned") is None
    assert script(driver, "return document.scripts.length") == 1          # the page's own
    assert script(driver, "return document.querySelectorAll('main img').length") == 0
    folder = link.get_attribute("href").split("/runs/")[1].split("/")[0]
    assert SAFE_FOLDER.fullmatch(folder) and (site / "runs" / folder / "index.html").is_file()
    link.click()
    assert driver.find_element("tag name", "h1").get_property("textContent") == SHOWN
    assert driver.title == f"run 3: {SHOWN}"
    assert script(driver, "return window.pwned") is None
    assert script(driver, "return document.scripts.length") == 0
    shown = driver.find_element("id", "attack-command").get_property("textContent")
    assert "fgsm,aa-fast(iters=10,queries=100)" in command_words(shown)
    assert csp_errors(driver) == []           # nothing was even tried


@browser
def test_an_unfinished_run_shows_no_number(driver, site, store, tmp_path):
    open_index(driver, site)
    row = driver.find_elements("css selector", "#leaderboard tbody tr")[rows(driver).index(4)]
    assert "unfinished: 1/2 batches" in row.text
    cells = row.find_elements("css selector", "td.num")
    numbers = [cell.text for cell in cells[2:-1]]                # after run and ε, before flags
    assert numbers and set(numbers) == {"—"}
    follow(driver, 4)
    body = driver.find_element("tag name", "main").text
    assert "did not finish, so no number of it is shown" in body
    assert not driver.find_elements("css selector", "#per-class, #eps-curve")
    assert "robeval attack" in driver.find_element("id", "attack-command").text
    plain = tmp_path / "finished-only"
    build_report(store, ReportConfig(out=str(plain), formats=("html",)))
    open_index(driver, plain)
    assert sorted(rows(driver)) == [1, 2, 3]
    assert not list((plain / "runs").glob("run4-*"))


# --- without a browser ----------------------------------------------------------------------

@pytest.mark.slow
def test_the_shown_command_finds_the_same_run(site, store, tmp_path, capsys):
    page = next((site / "runs").glob("run1-*/index.html")).read_text()
    block = re.search(r'<pre id="attack-command"><code>(.*?)</code></pre>', page, re.S).group(1)
    words = command_words(html.unescape(block))
    copy = tmp_path / "store.sqlite"
    with sqlite3.connect(store.path) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    words[words.index("--db") + 1] = str(copy)
    assert main([*words[1:], "--quiet", "--no-checks"]) == 0
    assert "(run 1)" in capsys.readouterr().out      # the stored run, not a new one
    with ResultsStore(copy, readonly=True) as reread:
        assert len(reread.runs()) == 4


@pytest.mark.slow
def test_html_with_md_writes_both_and_the_same_store_gives_the_same_site(store, tmp_path):
    first = build_report(store, ReportConfig(out=str(tmp_path / "a"), formats=("md", "html")))
    second = build_report(store, ReportConfig(out=str(tmp_path / "b"), formats=("html",)))
    assert set(first) == {"md", "html"} and first["html"].name == "index.html"
    files = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
                         for name in files)
    assert second["html"].read_text().count("<tr data-order") == 3


def test_names_become_text_and_safe_folder_names():
    assert "<" not in text(HOSTILE) and '"' not in text(HOSTILE) and "\n" not in text(HOSTILE)
    assert html.unescape(text(HOSTILE)) == SHOWN
    Entry = namedtuple("Entry", "run_id model")
    for name in (HOSTILE, "../../../etc/passwd", "", "   ", "ÄÖÜ", "a" * 500, "CON", "x/../y"):
        folder = run_folder(Entry(7, name))
        assert SAFE_FOLDER.fullmatch(folder) and len(folder) < 70, name
    assert run_folder(Entry(7, "a<b")) != run_folder(Entry(7, "a>b"))


def test_commands_quote_every_word_and_the_training_config_round_trips(tmp_path):
    Run = namedtuple("Run", "attacks eps norm n batch_size seed mode dataset")
    run = Run(["pgd10"], 8 / 255, "linf", 100, 50, 0, "cascade", "cifar10")
    path = "/runs/it's $(rm -rf ~) & <b>/best.pt"
    config = {"eval": {"suite": "pgd10", "n": 100, "batch_size": "auto", "data_dir": "/data dir"},
              "model": config_to_dict(resolve_config("ci-small")),
              "source": {"kind": "robeval", "path": path}}
    words = command_words(attack_command(config, run, "/stores/a b.sqlite"))
    assert words[:3] == ["robeval", "attack", path]
    assert words[words.index("--data-dir") + 1] == "/data dir"
    assert words[-2:] == ["--db", "/stores/a b.sqlite"]
    assert words[words.index("--batch-size") + 1] == "auto"
    assert command_words(train_command(config, "train-config.yaml"))[-2:] == ["--out", str(Path(path).parent)]
    file = tmp_path / "train-config.yaml"
    file.write_text(yaml.safe_dump(train_config(config)))
    assert resolve_config(config_file=file) == resolve_config("ci-small")
    assert attack_command({"source": {"kind": "python"}}, run, "s.sqlite") is None
    assert train_config({"source": {"kind": "state_dict", "path": path}, "model": {"arch": "x"}}) is None


def test_the_corruptions_mean_averages_each_type_over_its_severities_then_the_types():
    frame = pd.DataFrame({"run_id": [1, 1, 1, 2], "corruption": ["fog", "fog", "snow", "fog"],
                          "severity": [1, 2, 1, 1], "accuracy": [0.8, 0.6, 0.4, 0.5]})
    data = SimpleNamespace(corruptions=frame)
    assert corruptions_mean(data, 1) == pytest.approx((0.7 + 0.4) / 2)
    assert corruptions_mean(data, 3) is None
    assert corruptions_mean(SimpleNamespace(corruptions=frame.iloc[:0]), 1) is None


def test_a_partial_corruptions_measurement_says_what_it_covers():
    from robeval.report.leaderboard import corruptions_coverage

    full = pd.DataFrame([{"run_id": 1, "corruption": f"c{t}", "severity": s, "accuracy": 0.5}
                         for t in range(15) for s in range(1, 6)])
    part = pd.DataFrame([{"run_id": 2, "corruption": c, "severity": s, "accuracy": 0.5}
                         for c in ("fog", "snow") for s in (1, 5)])
    data = SimpleNamespace(corruptions=pd.concat([full, part]))
    assert corruptions_coverage(data, 1) is None
    assert corruptions_coverage(data, 2) == "2 types × 2 severities"
    assert corruptions_coverage(data, 3) is None
