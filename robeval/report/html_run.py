"""The page of one run in the HTML report: its numbers, figures, masking checks and the
commands that reproduce it. Figures are written as SVG files beside the page (text drawn as
paths, so no name in them is markup), the training config as `train-config.yaml`."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import yaml
from matplotlib.figure import Figure

from robeval.checkpoints import atomic_output, atomic_write_text, read_jsonl
from robeval.diagnostics.explain import evidence_summary
from robeval.errors import RobevalError
from robeval.report import figures
from robeval.report.commands import attack_command, train_command, train_config
from robeval.report.html_assets import DASH, facts_list, page, percent, text
from robeval.report.leaderboard import RunEntry

TRAIN_CONFIG = "train-config.yaml"
SVG_STYLE = {"svg.hashsalt": "robeval-report", "svg.fonttype": "path"}   # same bytes on every build


def save_svg(fig: Figure, path: Path) -> None:
    """`fig` as an SVG file at `path`, written atomically, the same bytes for the same figure."""
    with mpl.rc_context(SVG_STYLE), atomic_output(path) as buffer:
        fig.savefig(buffer, format="svg", metadata={"Date": None})


def _figure(folder: Path, name: str, fig: Figure, caption: str, shape: str = "") -> str:
    """A figure written beside the page and its HTML; `shape`: '', 'narrow' or 'wide'."""
    save_svg(fig, folder / f"{name}.svg")
    shape = f' class="{shape}"' if shape else ""
    return (f'<figure id="{name}"{shape}><img src="{name}.svg" alt="{text(caption)}">'
            f"<figcaption>{text(caption)}</figcaption></figure>")


def _summary_table(entry: RunEntry) -> str:
    rows = []
    for metric, found in entry.metrics.items():
        passes = DASH if math.isnan(found.passes_per_image) else f"{found.passes_per_image:.1f}"
        rows.append(f"<tr><th scope=\"row\">{text(metric)}</th><td class=\"num\">{percent(found.accuracy)}"
                    f"</td><td class=\"num\">{percent(found.ci_low)} – {percent(found.ci_high)}</td>"
                    f"<td class=\"num\">{passes}</td></tr>")
    return ("<table><thead><tr><th>metric</th><th class=\"num\">accuracy (%)</th>"
            "<th class=\"num\">95% interval</th><th class=\"num\">passes / image</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _numbers(entry: RunEntry) -> str:
    if entry.unfinished:
        return (f"<p><span class=\"badge unfinished\">{text(entry.unfinished)}</span> This evaluation "
                "did not finish, so no number of it is shown: rerun its command below to finish it.</p>")
    corruptions = ("" if entry.corruptions is None else f"<p>Common corruptions: mean accuracy "
                   f"{percent(entry.corruptions)}% over types and severities.</p>")
    note = (f"<p class=\"note\">Attack rows: robust accuracy under the attack ({text(entry.run.mode)} "
            "mode); worst case: robust under every attack of the suite. Intervals: Wilson, 95%.</p>")
    return _summary_table(entry) + corruptions + note


def _per_class(entry: RunEntry, folder: Path) -> str:
    fig = figures.per_class_accuracy(entry.per_class, class_names=entry.class_names or None)
    caption = (f"Per-class clean and robust (worst case over the suite) accuracy on the "
               f"{entry.setup['test images']} test images.")
    return _figure(folder, "per-class", fig, caption)


def _eps_curve(entry: RunEntry, folder: Path) -> str:
    if entry.eps_curve.empty:
        return ""
    fig = figures.robustness_vs_eps(entry.eps_curve, norm=entry.norm)
    caption = ("Robust accuracy against ε: the worst case over the suite of every stored run of "
               "this checkpoint, and PGD-20 at ε, 2ε and 4ε from the larger_eps check when it ran.")
    return _figure(folder, "eps-curve", fig, caption, "narrow")


def _training_figures(entry: RunEntry, folder: Path) -> str:
    if entry.history is None:
        return ""
    rows = read_jsonl(Path(entry.history))
    if not rows:
        return ""
    histories = {entry.label: (entry.activation_spec, rows)}
    parts = [_figure(folder, "training", figures.training_curves(histories),
                     "Training loss, clean and PGD validation accuracy per epoch.", "wide")]
    try:
        fig = figures.gradient_quality_curves(histories)
    except RobevalError:   # trained without per-epoch gradient diagnostics
        return parts[0]
    parts.append(_figure(folder, "gradient-quality", fig, "Linearisation error R(x, δ_FGSM) and "
                         "input-gradient norm per epoch on a fixed training batch; crosses mark "
                         "flagged catastrophic overfitting.", "wide"))
    return "".join(parts)


def _figures(entry: RunEntry, folder: Path) -> str:
    parts = [] if entry.unfinished else [_per_class(entry, folder), _eps_curve(entry, folder)]
    parts.append(_training_figures(entry, folder))
    shown = "".join(parts)
    return f'<h2>Figures</h2><div class="figures">{shown}</div>' if shown else ""


def _check_row(name: str, check: dict) -> str:
    passed = check.get("passed", True)
    verdict = '<span class="badge ok">pass</span>' if passed else '<span class="badge flag">FLAG</span>'
    evidence = text(evidence_summary(name, check.get("evidence") or {}))
    if not passed and check.get("flag"):
        evidence += f"<br><strong>{text(check['flag'])}</strong>"
    return (f"<tr><th scope=\"row\"><code>{text(name)}</code></th><td>{verdict}</td>"
            f"<td class=\"evidence\">{evidence}</td>"
            f"<td class=\"explain\">{text(check.get('explanation') or '')}</td></tr>")


def _checks(entry: RunEntry) -> str:
    if entry.checks:
        rows = "".join(_check_row(name, check) for name, check in entry.checks.items())
        body = ("<div class=\"scroll\"><table id=\"checks\"><thead><tr><th>check</th><th>result</th>"
                f"<th>evidence</th><th>what it tests</th></tr></thead><tbody>{rows}</tbody></table></div>")
    else:
        body = "<p class=\"muted\">No masking check ran with this evaluation (--no-checks).</p>"
    notes = "".join(f"<li>{text(note)}</li>" for note in entry.notes)
    if notes:
        body += f"<h3>Engine notes</h3><ul>{notes}</ul>"
    return f"<h2>Gradient-masking checks</h2>{body}"


def _commands(entry: RunEntry, folder: Path) -> str:
    store = entry.provenance["store"]
    attack = attack_command(entry.config, entry.run, store)
    parts = ["<h2>Reproduce</h2>"]
    if attack is None:
        parts.append("<p>This model was evaluated from Python (robeval.api): no command line loads "
                     "it again; the settings above are those to pass.</p>")
    else:
        parts.append(f"<p>Evaluate (into the same store):</p><pre id=\"attack-command\"><code>"
                     f"{text_block(attack)}</code></pre>")
    config = train_config(entry.config)
    command = train_command(entry.config, TRAIN_CONFIG)
    if config is not None and command is not None:
        dumped = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        atomic_write_text(folder / TRAIN_CONFIG, dumped)
        parts.append(f"<p>Train (with <a href=\"{TRAIN_CONFIG}\">{TRAIN_CONFIG}</a>, written beside "
                     f"this page, in the current folder):</p><pre id=\"train-command\"><code>"
                     f"{text_block(command)}</code></pre><details><summary>{TRAIN_CONFIG}"
                     f"</summary><pre><code>{text_block(dumped)}</code></pre></details>")
    return "".join(parts)


def text_block(value: str) -> str:
    """Preformatted text, escaped, its line breaks kept."""
    return "\n".join(text(line) for line in value.split("\n"))


def run_page(entry: RunEntry, folder: Path) -> str:
    """The HTML of a run's page; its figures and training config are written into `folder`."""
    title = f"run {entry.run_id}: {entry.model}"
    training = f"<div><h2>Training</h2>{facts_list(entry.training)}</div>" if entry.training else ""
    body = (f"<p><a href=\"../../index.html\">← leaderboard</a></p>\n<h1>{text(entry.model)}</h1>\n"
            f"<p class=\"subtitle\">run {entry.run_id} · {text(entry.label)}</p>\n"
            f"<h2>Results</h2>{_numbers(entry)}{_figures(entry, folder)}{_checks(entry)}"
            f"{_commands(entry, folder)}<div class=\"columns\"><div><h2>Evaluation</h2>"
            f"{facts_list(entry.setup)}</div>{training}</div>"
            f"<h2>Provenance</h2>{facts_list(entry.provenance)}")
    return page(title, body)
