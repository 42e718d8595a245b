"""The command lines that reproduce a stored run, built from the config it recorded.

An evaluation run records its evaluation settings (`eval`), what it knows of the model (`model`:
a robeval checkpoint's whole training config, a state_dict's architecture, a RobustBench entry)
and where the model came from (`source`: kind and checkpoint path). From these,
`attack_command` rebuilds the `robeval attack ...` line that gives the same run again (and
finishes an unfinished one); `train_config` is the training config to write as YAML for
`robeval train --config FILE`, which `train_command` names. Every argument is shell-quoted.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from robeval.sources import format_eps

INDENT = "    "
WIDTH = 88   # characters per line of a shown command before it continues on the next


def _groups(words: list[str]) -> list[str]:
    """The words joined into groups: the command and its model, then each option with its value."""
    groups, current = [], []
    for word in words:
        if word.startswith("--") and current:
            groups.append(" ".join(current))
            current = []
        current.append(word)
    return groups + [" ".join(current)] if current else groups


def _quoted(parts: list[str]) -> str:
    """The command line, every word shell-quoted, wrapped before `WIDTH` with continued lines."""
    lines: list[str] = []
    for group in _groups([shlex.quote(str(part)) for part in parts]):
        if lines and len(lines[-1]) + 1 + len(group) <= WIDTH:
            lines[-1] += f" {group}"
        else:
            lines.append(group if not lines else INDENT + group)
    return " \\\n".join(lines)


def _model_arguments(config: dict) -> list[str] | None:
    """MODEL and the options that load it again; None for a model given in Python."""
    source, model = config.get("source") or {}, config.get("model") or {}
    kind, path = source.get("kind"), source.get("path")
    if kind == "robustbench" and model.get("robustbench"):
        arguments = [f"robustbench:{model['robustbench']}"]
        if model.get("file"):
            arguments += ["--model-dir", str(Path(model["file"]).parents[2])]
        return arguments
    if kind == "state_dict" and path:
        return [path, "--arch", str(model.get("arch")), "--activation", str(model.get("activation"))]
    if kind == "robeval" and path:
        return [path]
    return None


def _evaluation_options(config: dict, run) -> list[str]:
    """--suite, --eps, ..., --db: the settings of the run as `robeval attack` options."""
    evaluation = config.get("eval") or {}
    options = ["--suite", evaluation.get("suite") or ",".join(run.attacks),
               "--eps", format_eps(float(run.eps)), "--norm", str(run.norm),
               "--n", str(evaluation.get("n") or run.n),
               "--batch-size", str(evaluation.get("batch_size") or run.batch_size),
               "--seed", str(run.seed), "--mode", str(run.mode), "--dataset", str(run.dataset)]
    if evaluation.get("data_dir"):
        options += ["--data-dir", str(evaluation["data_dir"])]
    if evaluation.get("device") not in (None, "auto"):
        options += ["--device", str(evaluation["device"])]
    if evaluation.get("checks") is False:
        options.append("--no-checks")
    return options


def attack_command(config: dict, run, store: str | Path) -> str | None:
    """The `robeval attack` command line of a stored run (a row of `ResultsStore.runs`) into
    `store`; None for a model evaluated from Python, which no command line loads."""
    model = _model_arguments(config)
    if model is None:
        return None
    return _quoted(["robeval", "attack", *model, *_evaluation_options(config, run), "--db", str(store)])


def train_config(config: dict) -> dict | None:
    """The whole training config of a robeval checkpoint (for `robeval train --config`), else None."""
    model = config.get("model") or {}
    if (config.get("source") or {}).get("kind") != "robeval" or "adversary" not in model:
        return None
    return model


def train_command(config: dict, config_file: str) -> str | None:
    """`robeval train --config CONFIG_FILE --out RUN_FOLDER` for a robeval checkpoint, else None."""
    path = (config.get("source") or {}).get("path")
    if train_config(config) is None or not path:
        return None
    return _quoted(["robeval", "train", "--config", config_file, "--out", str(Path(path).parent)])
