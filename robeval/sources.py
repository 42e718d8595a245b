"""The model to evaluate, from a robeval run, a plain state_dict file or RobustBench's model zoo.

`load_source(spec, ...)` returns a `ModelSource`: the model (eval mode, on the device, inputs in
[0,1]) and what is known about it. `spec` is one of:

* a robeval run folder (its `best.pt` is used) or checkpoint file (a dict with `model` and
  `config`): loaded by `robeval.runs.load_model`; dataset, ε, norm and class count come from the
  saved training config (a `standard`-trained run records no threat model). `dataset` may name
  another dataset than the training one if class and channel counts agree.
* a plain state_dict file (e.g. AutoAttack's example ResNet-18 `model_test.pt`), possibly wrapped
  under `state_dict` or `model` and possibly with `module.` prefixes: `arch` is required. Such
  checkpoints take raw [0,1] inputs, so the model is built with identity normalisation (mean 0,
  std 1); a state_dict saved from a whole robeval model (`net.` keys) brings its own `mean` and
  `std` when it has them. Class and channel counts come from `dataset` (default cifar10).
* `robustbench:<Name>`: the RobustBench zoo entry for `dataset` (default cifar10) and the threat
  model of `norm` (default linf). A local `model_dir/<dataset>/<Linf|L2>/<Name>.pt` is loaded by
  robeval with `weights_only=True`, following robustbench's checkpoint conventions; a missing one
  is downloaded by robustbench's `load_model` unless `ROBEVAL_OFFLINE=1`.

RobustBench models are benchmarked at a fixed threat model (CIFAR Linf 8/255 or L2 0.5, ImageNet
Linf 4/255). A `norm` selects the zoo looked in, so a name registered only under the other norm is
an error; an `eps` other than the benchmark's is an error too, because results at another radius
would not be comparable with the leaderboard. Attack such a model at another radius by wrapping
it yourself.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robeval.attacks.steps import NORMS
from robeval.checkpoints import load_checkpoint
from robeval.data import DATASETS, dataset_info
from robeval.errors import RobevalError, first_line
from robeval.identity import (  # noqa: F401  (re-exported: where loaders' users look)
    ModelSource,
    file_sha256,
    module_fingerprint,
    outputs_hash,
    probe_fingerprint,
    source_identity,
)
from robeval.models import build_model, load_state_dict_checked, model_names, state_dict_mismatch
from robeval.runs import checkpoint_path, load_model
from robeval.train.config import config_from_dict, config_to_dict, merge

ROBUSTBENCH_PREFIX = "robustbench:"
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100", "imagenet")
THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
NORMALIZATION_BUFFERS = ("mu", "sigma", "mean", "std")  # set by zoo architectures, absent in files
WRAPPER_PREFIXES = ("module.", "model.", "module.model.")  # DataParallel/DDP, wrapper attributes


def load_source(spec: str | Path, *, arch: str | None = None, activation: str | None = None,
                dataset: str | None = None, model_dir: str | Path = "models",
                eps: float | None = None, norm: str | None = None,
                device: str | torch.device = "cpu") -> ModelSource:
    """Load the model named by `spec` (run folder, checkpoint, state_dict file, robustbench:Name).

    `arch`/`activation` build a plain state_dict (or override a robeval checkpoint's); `dataset`
    sizes a plain state_dict, picks RobustBench's zoo and must agree with the model's class
    count; `eps`/`norm` only constrain RobustBench models (see the module doc).
    """
    spec = str(spec)
    if spec.lower().startswith(ROBUSTBENCH_PREFIX):
        if arch is not None or activation is not None:
            raise RobevalError(f"{spec} builds its own architecture: drop --arch and --activation")
        return load_robustbench(spec[len(ROBUSTBENCH_PREFIX):].strip(), dataset=dataset,
                                model_dir=model_dir, eps=eps, norm=norm, device=device)
    file = checkpoint_path(spec)
    checkpoint = load_checkpoint(file)
    if isinstance(checkpoint, dict) and "model" in checkpoint and "config" in checkpoint:
        source = _robeval_source(spec, file, checkpoint, arch, activation, device)
    else:
        source = _state_dict_source(file, checkpoint, arch, activation, dataset, device)
    source.path = str(file.resolve())
    check_dataset(source, dataset)
    return source


def check_dataset(source: ModelSource, dataset: str | None) -> None:
    """One-line error when `dataset` has another class count (or, if known, channel count)."""
    if dataset is None:
        return
    info = dataset_info(dataset)
    hint = f"pass --dataset {source.dataset}" if source.dataset else "pass the --dataset it was trained on"
    if info.num_classes != source.num_classes:
        raise RobevalError(f"{source.name}: model has {source.num_classes} classes but {info.name} "
                           f"has {info.num_classes}: {hint}")
    if source.dataset is not None:
        channels = dataset_info(source.dataset).channels
        if channels != info.channels:
            raise RobevalError(f"{source.name}: model takes {channels}-channel images but "
                               f"{info.name} has {info.channels}: {hint}")


def _robeval_source(spec: str, file: Path, checkpoint: dict, arch: str | None,
                    activation: str | None, device: str | torch.device) -> ModelSource:
    """A robeval checkpoint, through `runs.load_model`, described by its saved config."""
    model = load_model(file, device, arch=arch, activation=activation)
    overrides = {k: v for k, v in {"arch": arch, "activation": activation}.items() if v is not None}
    config = config_from_dict(merge(checkpoint["config"], {"model": overrides}))
    info = dataset_info(config.data.dataset)
    adversarial = config.adversary.method != "standard"
    return ModelSource(
        model=model, name=_run_name(Path(spec), file), kind="robeval",
        checkpoint_hash=file_sha256(file), num_classes=info.num_classes, dataset=info.name,
        eps=config.adversary.eps if adversarial else None,
        norm=NORMS.resolve(config.adversary.norm) if adversarial else None,
        config=config_to_dict(config),
    )


def _run_name(spec: Path, file: Path) -> str:
    """The run folder's name for a folder or its best.pt, else `folder/file`."""
    folder = file.resolve().parent.name
    return folder if spec.is_dir() or file.name == "best.pt" else f"{folder}/{file.name}"


def _state_dict_source(file: Path, checkpoint: Any, arch: str | None, activation: str | None,
                       dataset: str | None, device: str | torch.device) -> ModelSource:
    """A plain state_dict, built as `arch` with identity normalisation (raw [0,1] inputs)."""
    if arch is None:
        raise RobevalError(f"{file} is a plain state_dict: pass --arch NAME "
                           f"(known: {', '.join(model_names())})")
    info = dataset_info(dataset or "cifar10")
    activation = activation or "relu"
    channels = info.channels
    model = build_model(arch, activation, info.num_classes, channels,
                        mean=(0.0,) * channels, std=(1.0,) * channels)
    state_dict = unwrap_state_dict(checkpoint, str(file))
    outputs = classifier_outputs(state_dict)
    if outputs is not None and outputs != info.num_classes:
        raise RobevalError(f"{file.name}: model has {outputs} classes but {info.name} has "
                           f"{info.num_classes}: pass the --dataset it was trained on")
    load_into_arch(model, state_dict, str(file), arch)
    return ModelSource(
        model=model.to(device).eval(), name=file.name, kind="state_dict",
        checkpoint_hash=file_sha256(file), num_classes=info.num_classes,
        dataset=None if dataset is None else info.name,
        config={"arch": arch, "activation": activation},
    )


def load_into_arch(model: nn.Module, state_dict: dict, source: str, arch: str) -> None:
    """Load a plain state_dict into a built robeval model, dropping nothing.

    The keys must be those of the network (`model.net`) or of the whole model (`net.` keys, its
    `mean`/`std` optional), as saved or after stripping one of `WRAPPER_PREFIXES` from every
    key. A prefix is stripped only when every key then matches: the state_dict of a wrapper
    around the network (preprocessing, normalisation, quantisation) has keys of its own, and
    loading its inner network alone would evaluate another model.
    """
    whole = dict(model.state_dict())
    targets = ((model.net, set(model.net.state_dict()), set()),
               (model, set(whole), {"mean", "std"}))
    candidates = prefix_candidates(state_dict)
    for stripped in candidates:
        for target, expected, optional in targets:
            if expected - optional <= stripped.keys() <= expected:
                defaults = {key: whole[key] for key in optional - stripped.keys()}
                load_state_dict_checked(target, {**defaults, **stripped}, source)
                return
    net_keys = set(model.net.state_dict())
    loose = {strip_any_prefix(key): value for key, value in state_dict.items()}
    closest = max([*candidates, loose], key=lambda keys: len(net_keys & keys.keys()))
    leftover = sorted(closest.keys() - net_keys)
    missing = sorted(net_keys - closest.keys())
    details = "; ".join(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                        for keys, what in ((leftover, "left over"), (missing, "missing")) if keys)
    raise RobevalError(f"{source} does not match the architecture --arch {arch} ({details}, even with a "
                       f"{' or '.join(WRAPPER_PREFIXES)} prefix stripped): a wrapper's state_dict "
                       "cannot be loaded into the bare network; build the wrapper in Python and "
                       "evaluate it with robeval.evaluate_model, or pass the --arch it was saved from")


def prefix_candidates(state_dict: dict) -> list[dict]:
    """`state_dict` as saved, then without each of `WRAPPER_PREFIXES` that every key carries."""
    candidates = [state_dict]
    for prefix in WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state_dict):
            candidates.append({key[len(prefix):]: value for key, value in state_dict.items()})
    return candidates


def strip_any_prefix(key: str) -> str:
    """`key` without any run of `WRAPPER_PREFIXES` it starts with (for error messages)."""
    while prefix := next((p for p in WRAPPER_PREFIXES if key.startswith(p)), ""):
        key = key[len(prefix):]
    return key


def classifier_outputs(state_dict: dict) -> int | None:
    """Rows of the last 2-D weight (the classifier's output size), when there is one."""
    matrices = [value for key, value in state_dict.items()
                if key.endswith("weight") and getattr(value, "ndim", 0) == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def unwrap_state_dict(checkpoint: Any, source: str) -> dict:
    """The tensors of a checkpoint, unwrapped from `state_dict`/`model` entries, keys as saved."""
    for _ in range(3):
        inner = next((checkpoint[key] for key in ("state_dict", "model")
                      if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict)), None)
        if inner is None:
            break
        checkpoint = inner
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
            isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise RobevalError(f"{source} holds no state_dict (a mapping of names to tensors): "
                           "save model.state_dict() or point to another file")
    return {str(key): value for key, value in checkpoint.items()}


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    """`key` without each of `prefixes`, in order, where it starts with them."""
    for prefix in prefixes:
        key = key.removeprefix(prefix)
    return key


def load_robustbench(name: str, *, dataset: str | None = None, model_dir: str | Path = "models",
                     eps: float | None = None, norm: str | None = None,
                     device: str | torch.device = "cpu") -> ModelSource:
    """RobustBench's `name`: a local checkpoint loaded here, else robustbench's download."""
    benchmark = _benchmark_dataset(dataset)
    threat_model = THREAT_MODELS[NORMS.resolve(norm or "linf")]
    entry = robustbench_entry(name, benchmark, threat_model)
    bench_eps = benchmark_eps(benchmark, threat_model)
    if eps is not None and not math.isclose(eps, bench_eps, rel_tol=1e-6, abs_tol=1e-9):
        raise RobevalError(f"robustbench:{name} is benchmarked at {threat_model} eps="
                           f"{format_eps(bench_eps)}; drop --eps or use --eps {format_eps(bench_eps)}")
    path = Path(model_dir) / benchmark / threat_model / f"{name}.pt"
    from_file = _loads_from_file(name, entry, benchmark, threat_model)
    if from_file and path.is_file():
        model = _load_zoo_file(name, entry, path)
    else:
        _check_online(name, path, from_file)
        model = _download(name, path, model_dir, benchmark, threat_model)
    return ModelSource(
        model=model.to(device).eval(), name=f"robustbench:{name}", kind="robustbench",
        checkpoint_hash=file_sha256(path) if path.is_file() else None,
        num_classes=dataset_info(benchmark).num_classes, dataset=benchmark, eps=bench_eps,
        norm=threat_model.lower(),
        config={"robustbench": name, "dataset": benchmark, "threat_model": threat_model,
                "eps": bench_eps, "file": str(path)},
    )


def _benchmark_dataset(dataset: str | None) -> str:
    """The RobustBench dataset for `dataset` (default cifar10)."""
    name = DATASETS.resolve(dataset or "cifar10")
    if name not in ROBUSTBENCH_DATASETS:
        raise RobevalError(f"RobustBench has models for {', '.join(ROBUSTBENCH_DATASETS)}, not "
                           f"{name}: pass --dataset cifar10 (or cifar100, imagenet)")
    return name


def benchmark_eps(dataset: str, threat_model: str) -> float:
    """RobustBench's ε for a dataset and threat model (Linf 8/255, ImageNet 4/255; L2 0.5)."""
    if threat_model == "L2":
        return 0.5
    return 4 / 255 if dataset == "imagenet" else 8 / 255


def format_eps(eps: float) -> str:
    """`8/255` for multiples of 1/255, else the number."""
    steps = eps * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 else f"{eps:g}"


def robustbench_zoo() -> dict:
    """robustbench's model zoo as {dataset: {threat model: {name: entry}}}, plain strings as keys."""
    from robeval.robustbench_compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts

    return {dataset.value: {threat.value: models for threat, models in zoo.items()
                            if threat.value in THREAT_MODELS.values()}
            for dataset, zoo in model_dicts.items()}


def robustbench_entry(name: str, dataset: str, threat_model: str) -> dict:
    """The zoo entry of `name`, or a one-line error naming where it is or what is close."""
    zoo = robustbench_zoo()
    models = zoo[dataset].get(threat_model, {})
    if name in models:
        return models[name]
    other = [threat for threat, entries in zoo[dataset].items() if name in entries]
    if other:
        raise RobevalError(f"robustbench:{name} is registered for {dataset} under {other[0]}, not "
                           f"{threat_model}: drop --norm or pass --norm {other[0].lower()}")
    datasets = [data for data, threats in zoo.items() if any(name in m for m in threats.values())]
    if datasets:
        raise RobevalError(f"robustbench:{name} is a {datasets[0]} model, not {dataset}: pass "
                           f"--dataset {datasets[0]}")
    raise RobevalError(f"unknown RobustBench model {name!r} for {dataset} {threat_model}; "
                       f"close names: {', '.join(close_names(name, list(models)))}")


def close_names(name: str, names: list[str], n: int = 5) -> list[str]:
    """Up to `n` of `names` closest to `name` (ignoring case), or the first `n` if none is."""
    lowered = {candidate.lower(): candidate for candidate in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.4)
    return [lowered[match] for match in close] or names[:n]


def _loads_from_file(name: str, entry: dict, dataset: str, threat_model: str) -> bool:
    """Whether robustbench keeps this model in one `<Name>.pt` (not timm, torchvision, ensembles)."""
    import timm

    gdrive_id = entry.get("gdrive_id")
    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat_model.lower()}"
    standard_imagenet = dataset == "imagenet" and "Standard" in name
    return isinstance(gdrive_id, str) and bool(gdrive_id) and not standard_imagenet \
        and not timm.is_model(timm_name)


def _load_zoo_file(name: str, entry: dict, path: Path) -> nn.Module:
    """Build the zoo architecture and load `path` into it (weights only, robustbench's layout)."""
    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and ("Kireev2021Effectiveness" in name
                                         or name == "Andriushchenko2020Understanding"):
        checkpoint = checkpoint.get("last", checkpoint)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    state_dict = unwrap_state_dict(checkpoint, str(path))
    model = _build_zoo_model(name, entry)
    fitted = fit_zoo_state_dict(model, state_dict)
    problem = state_dict_mismatch(model.state_dict(), fitted)
    if problem:
        raise RobevalError(f"{path} does not fit robustbench:{name} ({problem}): delete it to "
                           "download it again, or put the right checkpoint there")
    model.load_state_dict(fitted)
    return model


def _build_zoo_model(name: str, entry: dict) -> nn.Module:
    """The architecture of a zoo entry, with failures as one line."""
    try:
        return entry["model"]()
    except Exception as err:
        raise RobevalError(f"robustbench:{name}: building its architecture failed "
                           f"({type(err).__name__}: {first_line(err, 'no message')})") from err


def fit_zoo_state_dict(model: nn.Module, state_dict: dict) -> dict:
    """Map a checkpoint's keys onto `model` the way robustbench's loader does.

    Keys lose `module.` and then `model.` prefixes, or gain `model.` (ImageNet models wrapped in a
    normalisation layer), whichever fits the architecture best. Normalisation buffers the file
    lacks (mu, sigma, mean, std) keep the architecture's values, and keys the architecture does
    not have are dropped once every key it has is present, as robustbench's non-strict loads do.
    """
    expected = model.state_dict()
    stripped = {_strip(k, ("module.", "model.")): v for k, v in state_dict.items()}
    candidates = [stripped, {f"model.{k}": v for k, v in stripped.items()},
                  {_strip(k, ("module.",)): v for k, v in state_dict.items()}]
    fitted = dict(max(candidates, key=lambda keys: len(expected.keys() & keys.keys())))
    buffers = dict(model.named_buffers())
    for key in expected.keys() - fitted.keys():
        if key in buffers and key.rsplit(".", 1)[-1] in NORMALIZATION_BUFFERS:
            fitted[key] = expected[key]
    if expected.keys() <= fitted.keys():
        fitted = {k: v for k, v in fitted.items() if k in expected}
    return fitted


def _check_online(name: str, path: Path, from_file: bool) -> None:
    """One-line error when a download is needed but ROBEVAL_OFFLINE=1."""
    if os.environ.get("ROBEVAL_OFFLINE") != "1":
        return
    if from_file:
        raise RobevalError(f"robustbench:{name}: no checkpoint at {path} and ROBEVAL_OFFLINE=1: put "
                           "the checkpoint there or allow the network (unset ROBEVAL_OFFLINE)")
    raise RobevalError(f"robustbench:{name} is fetched only by robustbench's own downloader (an "
                       "ensemble, or timm/torchvision weights) and ROBEVAL_OFFLINE=1: allow the "
                       "network (unset ROBEVAL_OFFLINE) or pick another model")


def _download(name: str, path: Path, model_dir: str | Path, dataset: str,
              threat_model: str) -> nn.Module:
    """robustbench's own `load_model`, which downloads; failures become one line naming the file."""
    from robeval.robustbench_compat import import_robustbench, weights_only_loads

    robustbench = import_robustbench()
    try:
        with weights_only_loads():
            return robustbench.load_model(name, model_dir=str(model_dir), dataset=dataset,
                                          threat_model=threat_model)
    except Exception as err:
        raise RobevalError(f"robustbench:{name}: could not download or load {path} "
                           f"({type(err).__name__}: {first_line(err, 'no message')}): check the network, or "
                           "put the checkpoint there") from err
