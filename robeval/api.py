"""Evaluate any `nn.Module` from Python: the `robeval attack` and `robeval diagnose` paths.

The model takes images in [0,1] of shape (N, C, H, W) and returns logits; whatever it does
inside (normalisation, preprocessing, a defence) is part of what is evaluated. It is keyed in
the results store by its class, a hash of its parameters and buffers and a hash of its outputs
on a fixed probe batch, so a different model under the same name (or the same weights with
another plain attribute, such as a temperature) starts a new run and the same model resumes
its own. Without a `store` the
results go to a temporary database that disappears with the returned result. The model is
borrowed: its device, training flags and `requires_grad` flags are put back afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from robeval.attacks import ThreatModel, parse_suite
from robeval.attacks.corruptions import split_suite_items
from robeval.attacks.guard import check_materialised, model_dtype, out_of_memory
from robeval.data import dataset_info
from robeval.data.contract import check_image_tensors
from robeval.device import resolve_device
from robeval.diagnose import Diagnosis, diagnose, summary_lines
from robeval.errors import RobevalError
from robeval.evaluate import (
    CHECK_IMAGES,
    EvalConfig,
    EvalResult,
    ResolvedEval,
    check_mode,
    conclude,
    evaluate,
    gated,
    guarded,
    open_evaluation,
    prepare_model,
    run_batches,
)
from robeval.results import ResultsStore
from robeval.schema import validated
from robeval.sources import ModelSource, module_fingerprint, probe_fingerprint
from robeval.spec import parse_eps

DEFAULT_SUITE = EvalConfig.suite


def evaluate_model(model: nn.Module, *, eps: float | str, suite: str = DEFAULT_SUITE,
                   dataset: str = "cifar10", data_dir: str | Path | None = None, n: int | None = 1000,
                   norm: str = "linf", batch_size: int | str = "auto", seed: int = 0,
                   mode: str = "cascade", device: str = "auto", checks: bool = True,
                   store: ResultsStore | str | Path | None = None, name: str | None = None,
                   fresh: bool = False, progress: bool = False,
                   log: Callable[[str], None] = print) -> EvalResult:
    """Attack `model` with `suite` on the first `n` test images of `dataset`, as `robeval attack`.

    Returns the `EvalResult` of the command line: `summary` (accuracy per attack, clean and worst
    case, with 95% intervals), `checks` (the cheap gradient-masking checks) and the run in
    `store` (`result.store.per_sample(result.run_id)` gives per-sample outcomes). `store` is a
    `ResultsStore` or a database path; None keeps the results in a temporary database.
    """
    eps = parse_eps(eps)
    source = python_source(model, name, dataset, eps, norm)
    config = EvalConfig(suite=suite, eps=eps, norm=norm, n=n, batch_size=batch_size, seed=seed,
                        mode=mode, dataset=dataset, data_dir=None if data_dir is None else str(data_dir),
                        device=device, checks=checks)
    with borrowed(model):
        result = evaluate(source, config, open_store(store), fresh=fresh, progress=progress, log=log)
    print_flags(result, log)
    return result


def diagnose_model(model: nn.Module, *, eps: float | str, dataset: str = "cifar10",
                   data_dir: str | Path | None = None, n: int = 200, norm: str = "linf",
                   checks: str = "all", seed: int = 0, device: str = "auto",
                   store: ResultsStore | str | Path | None = None, name: str | None = None,
                   pgd_steps: int = 10, log: Callable[[str], None] = print) -> Diagnosis:
    """Gradient diagnostics and gradient-masking checks on `model`, as `robeval diagnose`.

    Returns the `Diagnosis`: `gradients` (one row per quantity), `checks` and `flags`. `checks`
    is "all", "cheap" or a comma-separated list of names; with a `store` the diagnosis is also
    recorded there as a run. Logs, through `log`, the summary `robeval diagnose` prints.
    """
    eps = parse_eps(eps)
    source = python_source(model, name, dataset, eps, norm)
    config = EvalConfig(eps=eps, norm=norm, n=n, seed=seed, dataset=dataset,
                        data_dir=None if data_dir is None else str(data_dir), device=device)
    opened = None if store is None else open_store(store)
    with borrowed(model):
        diagnosis = diagnose(source, config, opened, checks=checks, pgd_steps=pgd_steps, log=log)
    for line in summary_lines(diagnosis, None if opened is None else str(opened.path)):
        log(line)
    return diagnosis


def attack_tensors(model: nn.Module, images: Tensor, labels: Tensor, *, eps: float | str,
                   suite: str = DEFAULT_SUITE, norm: str = "linf", seed: int = 0,
                   mode: str = "cascade", batch_size: int = 256, device: str = "auto",
                   checks: bool = False, store: ResultsStore | str | Path | None = None,
                   name: str | None = None, fresh: bool = False,
                   log: Callable[[str], None] = print) -> EvalResult:
    """Attack `model` on your own `images` (float, in [0,1], N×C×H×W) and integer `labels`.

    The same engine and result as `evaluate_model`, batch by batch; the run is keyed by the
    model and a hash of the tensors, so it resumes when called again with the same arguments.
    `checks` also runs the cheap gradient-masking checks on the first 200 images.
    """
    check_module(model)
    eps = parse_eps(eps)
    images, labels = checked_tensors(images, labels)
    check_mode(mode)
    data = f"tensors:{tensor_hash(images, labels)}"
    config = validated(EvalConfig(suite=suite, eps=eps, norm=norm.lower(), n=len(labels),
                                  batch_size=batch_size, seed=seed, mode=mode, dataset=data,
                                  device=device, checks=checks))
    plan = ResolvedEval(suite, eps, config.norm, len(labels), config.seed, mode, data, None)
    classes = output_classes(model, images[:1])
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise RobevalError(f"labels must lie in 0..{classes - 1}: the model outputs {classes} classes")
    outputs = probe_fingerprint(model, tuple(images.shape[1:]))
    source = ModelSource(model=model, name=name or class_name(model), kind="python", checkpoint_hash=None,
                         num_classes=classes, eps=eps, norm=plan.norm, config=module_config(model, outputs),
                         probe_fingerprint=outputs)
    items = parse_suite(suite, ThreatModel(eps, plan.norm))
    attacks, corruptions = split_suite_items(items)
    attacks = gated(attacks)
    store = open_store(store)
    with borrowed(model):
        device_ = resolve_device(device)
        prepared = guarded(prepare_model(model, device_), source)
        x, y = images.to(device_), labels.to(device_)
        run_id, size, todo, n_done = open_evaluation(
            source, config, plan, [item.spec for item in items], store, prepared, x, y, device_,
            fresh, lambda _: None, corruptions)
        run_batches(prepared, attacks, x, y, plan, store, run_id, size, todo, n_done,
                    corruptions=corruptions)
        result = conclude(prepared, store, run_id, x[:CHECK_IMAGES], y[:CHECK_IMAGES], plan,
                          checks and bool(attacks), n_done, log)
    print_flags(result, log)
    return result


def print_flags(result: EvalResult, log: Callable[[str], None] = print) -> None:
    """The masking flags and the engine's notes, one line each, as `robeval attack` prints them."""
    for line in result.flag_lines() + result.note_lines():
        log(line)


# --- helpers ---------------------------------------------------------------------------------

def python_source(model: nn.Module, name: str | None, dataset: str, eps: float, norm: str) -> ModelSource:
    """A `ModelSource` for an in-memory module, its class count checked against `dataset`."""
    check_module(model)
    info = dataset_info(dataset)
    probe = torch.zeros(1, info.channels, info.image_size, info.image_size)
    classes = output_classes(model, probe)
    if classes != info.num_classes:
        raise RobevalError(f"{name or class_name(model)} outputs {classes} classes but {info.name} has "
                           f"{info.num_classes}: pass the dataset it was trained on")
    outputs = probe_fingerprint(model, tuple(probe.shape[1:]))
    return ModelSource(model=model, name=name or class_name(model), kind="python", checkpoint_hash=None,
                       num_classes=classes, dataset=info.name, eps=eps, norm=norm.lower(),
                       config=module_config(model, outputs), probe_fingerprint=outputs)


def check_module(model: object) -> None:
    """A one-line error for a model that is not a torch module (a function, a state_dict)."""
    if not isinstance(model, nn.Module):
        raise RobevalError(f"model must be a torch.nn.Module, not {type(model).__name__}")


def output_classes(model: nn.Module, probe: Tensor) -> int:
    """The width of the model's output on `probe` (eval mode, on the model's device and in its
    dtype, the global RNG untouched)."""
    check_materialised(model, class_name(model))
    with borrowed(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        model.eval()
        try:
            outputs = model(probe.to(module_device(model), model_dtype(model), copy=True))
        except Exception as err:
            if out_of_memory(err):
                raise RobevalError(f"{class_name(model)} ran out of memory on a {tuple(probe.shape)} "
                                   "batch of images: free some memory or use device='cpu'") from err
            raise RobevalError(f"{class_name(model)} failed on a {tuple(probe.shape)} batch of images "
                               f"({type(err).__name__}: {err}): it must take N×C×H×W images in "
                               "[0,1]") from err
    if not isinstance(outputs, Tensor):
        raise RobevalError(f"{class_name(model)} returned a {type(outputs).__name__}, not a tensor of "
                           "logits: make forward return one tensor of shape (N, classes)")
    if not outputs.is_floating_point():
        raise RobevalError(f"{class_name(model)} returned {outputs.dtype} outputs: logits must be "
                           "floating point (return the scores before argmax)")
    if outputs.ndim != 2:
        raise RobevalError(f"{class_name(model)} returned shape {tuple(outputs.shape)}: it must return "
                           "logits of shape (N, classes)")
    return int(outputs.shape[1])


def class_name(model: nn.Module) -> str:
    """The qualified name of the model's class."""
    return f"{type(model).__module__}.{type(model).__qualname__}"


def module_config(model: nn.Module, outputs: str | None = None) -> dict:
    """Provenance of an in-memory module: its class, fingerprint and, when given, the fingerprint
    of its outputs on the probe (`robeval.sources.probe_fingerprint`)."""
    config = {"class": class_name(model), "fingerprint": module_fingerprint(model)}
    return config if outputs is None else config | {"outputs": outputs}


def module_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a stateless module)."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), None)
    return torch.device("cpu") if tensor is None else tensor.device


@contextlib.contextmanager
def borrowed(model: nn.Module) -> Iterator[None]:
    """Put back the model's device, training flags and parameters' `requires_grad` afterwards."""
    device = module_device(model)
    training = [(module, module.training) for module in model.modules()]
    grads = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        yield
    finally:
        model.to(device)
        for module, flag in training:
            module.training = flag
        for parameter, flag in grads:
            parameter.requires_grad_(flag)


def checked_tensors(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Images as float N×C×H×W in [0,1] and labels as int64 (N,), or a one-line error."""
    check_image_tensors(images, labels)
    return images.detach(), labels.detach().long()


def tensor_hash(images: Tensor, labels: Tensor) -> str:
    """A short sha256 of the images and labels (values, dtype and shape)."""
    digest = hashlib.sha256()
    for tensor in (images, labels):
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{value.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def open_store(store: ResultsStore | str | Path | None) -> ResultsStore:
    """The store given, a store at the path given, or a temporary one removed with its object."""
    if isinstance(store, ResultsStore):
        return store
    if store is not None:
        return ResultsStore(store)
    folder = tempfile.mkdtemp(prefix="robeval-")
    temporary = ResultsStore(Path(folder) / "robeval.sqlite")
    weakref.finalize(temporary, shutil.rmtree, folder, True)
    return temporary
