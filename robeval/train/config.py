"""Training configuration: frozen dataclasses, presets, YAML files and overrides."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from robeval.activations import SMOOTH_GRAD_MODES, activation_factory
from robeval.attacks.steps import NORMS
from robeval.data import DATASETS, DataConfig
from robeval.device import check_device
from robeval.errors import RobevalError, short_repr
from robeval.models import ModelConfig, resolve_arch
from robeval.schema import MAX_BATCH, MAX_EPOCHS, MAX_STEPS, MAX_TRAIN_SEED, finite, validated, whole
from robeval.spec import parse_eps, parse_number
from robeval.train.methods import METHODS
from robeval.train.optimizers import OPTIMIZERS
from robeval.train.schedule import SCHEDULES
from robeval.yamlfile import read_yaml

BN_MODES = ("eval", "train")
CONFIG_ONLY = frozenset({"val_batch_size"})  # settings without a command-line option


@dataclass(frozen=True)
class AdversaryConfig:
    """How training examples are crafted (the inner maximisation)."""

    method: str = "pgd"              # a name in METHODS (train.methods)
    norm: str = "linf"               # a name in NORMS (l2 for pgd and trades)
    eps: float = 8 / 255             # radius of the threat model, [0,1] pixel units
    steps: whole(1, MAX_STEPS) = 1   # attack steps for pgd and trades (1 = SAT's PGD-1)
    # None: ε for 1 step (1.25ε for FGSM with random start), 2.5ε/K else
    step_size: finite(gt=0) | None = None
    random_start: bool = False       # start from a uniform point in the ε-ball
    bn_mode: str = "eval"            # BatchNorm while crafting: eval (running stats) | train (batch)
    eps_warmup_epochs: finite(ge=0, le=MAX_EPOCHS) = 0  # ε grows linearly from 0 over these epochs
    trades_beta: finite(ge=0) = 6.0  # TRADES weight of the KL term
    igr_lambda: finite(ge=0) | None = None  # IGR weight of ‖∇ₓL‖₁; None: ε (first-order L∞ inner max)


@dataclass(frozen=True)
class OptimConfig:
    """The outer minimisation: optimiser, schedule and regularisers."""

    optimizer: str = "sgd"           # a name in OPTIMIZERS (train.optimizers)
    lr: finite(gt=0) = 0.1           # peak learning rate at base_batch_size
    momentum: finite(ge=0, lt=1) = 0.9  # sgd momentum
    nesterov: bool = False
    weight_decay: finite(ge=0) = 5e-4
    schedule: str = "piecewise"      # a name in SCHEDULES (train.schedule)
    milestones: tuple[whole(0, MAX_EPOCHS), ...] = ()  # piecewise: epochs where the LR is multiplied by gamma
    gamma: finite(gt=0) = 0.1
    warmup_epochs: finite(ge=0, le=MAX_EPOCHS) = 0  # linear LR warm-up from 0, in epochs
    batch_size: whole(1, MAX_BATCH) = 128  # images per optimiser step, summed over all ranks
    lr_scaling: str = "none"         # none | linear: lr × batch_size / base_batch_size
    base_batch_size: whole(1, MAX_BATCH) = 128
    label_smoothing: finite(ge=0, lt=1) = 0.0  # on the training loss only, never in the attack


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as config.yaml next to its checkpoints."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: whole(1, MAX_EPOCHS) = 10
    seed: whole(0, MAX_TRAIN_SEED) = 0
    device: str = "auto"             # auto (cuda when present) | cuda | cpu
    amp: bool = False                # bf16 autocast on CUDA; ignored on CPU
    val_pgd_steps: whole(1, MAX_STEPS) = 10  # validation attack: PGD-K, step ε/4, random start
    val_batch_size: whole(1, MAX_BATCH) = 256
    # stop after N epochs without a better validation PGD accuracy (None: never)
    early_stop_patience: whole(0, MAX_EPOCHS) | None = None
    # fixed training images for per-epoch gradient diagnostics (0: off)
    diagnostics_batch: whole(0, MAX_BATCH) = 128
    stop_on_collapse: bool = False   # end the run when catastrophic overfitting is flagged
    sync_bn: bool = False            # several ranks: BatchNorm statistics over the global batch
    preset: str | None = None        # the preset this config started from, for the record

    @property
    def effective_lr(self) -> float:
        """The peak LR after the batch-size scaling rule."""
        scale = self.optim.batch_size / self.optim.base_batch_size
        return self.optim.lr * (scale if self.optim.lr_scaling == "linear" else 1.0)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "adversary": AdversaryConfig,
            "optim": OptimConfig}


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for YAML, JSON and checkpoints."""

    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _coerce(section: type, name: str, value: Any) -> Any:
    """Turn YAML/CLI values into the field's type (fractions like 8/255 included); ranges and
    booleans are left to the settings schema (`validated`)."""
    kinds = _declared_types(section)
    if name not in kinds:
        raise RobevalError(f"unknown setting {name!r} in {section.__name__}; known: {', '.join(kinds)}")
    kind, optional = kinds[name]
    if value is None:
        if not optional:
            raise RobevalError(f"{option_name(name)} is empty (null in the config): give it a value "
                               "or leave the key out for the default")
        return None
    if name == "eps":
        return parse_eps(value)
    if kind is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_whole_number(name, v) for v in value)
    if kind is int:
        return _whole_number(name, value)
    if kind is float:
        return _number(name, value)
    if kind is str and not isinstance(value, str):
        raise RobevalError(f"{option_name(name)} must be a name (text), not {short_repr(value)}")
    return value


@cache
def _declared_types(section: type) -> dict[str, tuple[type, bool]]:
    """Each field's plain type (int, float, bool, str or tuple) and whether it may be None."""
    kinds = {}
    for name, hint in get_type_hints(section).items():
        union = get_origin(hint) in (Union, UnionType)
        parts = [part for part in get_args(hint) if part is not type(None)] if union else [hint]
        kinds[name] = (get_origin(parts[0]) or parts[0], union)
    return kinds


def option_name(name: str) -> str:
    """How a setting is called in messages: its command-line option, else its config key."""
    return name if name in CONFIG_ONLY else "--" + name.replace("_", "-")


def _number(name: str, value: Any) -> float:
    """A YAML/CLI value as a float; non-numbers are an error naming the setting (nan stays nan)."""
    try:
        if isinstance(value, bool):
            raise RobevalError("a boolean is not a number")
        number = parse_number(value)
        return float(number)
    except OverflowError:      # a whole number past float's range: infinite, refused by the checks
        return math.inf if number > 0 else -math.inf
    except RobevalError as err:
        raise RobevalError(f"{option_name(name)} must be a number (e.g. 0.5, 1e-3 or 8/255), "
                           f"not {short_repr(value)}") from err


def _whole_number(name: str, value: Any) -> int:
    """A YAML/CLI value as an int; nan, inf and fractions are an error naming the setting."""
    if not isinstance(value, bool):
        with contextlib.suppress(RobevalError):
            exact = parse_number(value)
            if isinstance(exact, int):
                return exact      # exact, however large: the schema's range check names it
    number = _number(name, value)
    if not math.isfinite(number) or not number.is_integer():
        shown = value if isinstance(value, (float, str)) and len(str(value)) <= 40 else short_repr(value)
        raise RobevalError(f"{option_name(name)} must be a whole number (e.g. 10), not {shown}")
    return int(number)


def _build(section: type, values: dict[str, Any]) -> Any:
    return section(**{k: _coerce(section, k, v) for k, v in values.items()})   # `validate` checks it


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update: sections merge key by key, scalars replace."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a `TrainConfig` from a nested dict (missing keys take defaults)."""
    values = dict(values)
    for name in SECTIONS:
        if values.get(name) is not None and not isinstance(values[name], dict):
            raise RobevalError(f"config section {name!r} must be a mapping of settings (e.g. "
                               f"'{name}: {{key: value}}'), not {short_repr(values[name])}")
    sections = {name: _build(cls, values.pop(name, None) or {}) for name, cls in SECTIONS.items()}
    top = {k: _coerce(TrainConfig, k, v) for k, v in values.items()}
    return validate(TrainConfig(**sections, **top))


def _choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise RobevalError(f"unknown {what} {value!r}; known: {', '.join(choices)}")


def validate(config: TrainConfig) -> TrainConfig:
    """`config` with every setting checked against the settings schema (types and ranges) and
    against each other, converted to the declared types; else a one-line RobevalError."""
    config = validated_fields(config)
    adv, optim = config.adversary, config.optim
    for value, registry in ((adv.method, METHODS), (optim.optimizer, OPTIMIZERS),
                            (optim.schedule, SCHEDULES)):
        _choice(value, registry.names(), registry.kind)   # exact names: configs are saved as given
    _choice(adv.bn_mode, BN_MODES, "BN mode")
    _choice(optim.lr_scaling, ("none", "linear"), "LR scaling rule")
    _choice(config.model.smooth_grad, tuple(SMOOTH_GRAD_MODES), "smooth-grad mode")
    DATASETS.resolve(config.data.dataset)
    resolve_arch(config.model.arch)
    activation_factory(config.model.activation, config.model.smooth_grad)
    norm = NORMS.resolve(adv.norm)
    if norm == "l2" and adv.method not in ("pgd", "trades", "standard"):
        raise RobevalError(f"--norm l2 works with --method pgd or trades, not {adv.method}")
    parse_eps(adv.eps)
    _check_peak_lr(config)
    if config.device != "auto":
        check_device(config.device)
    return config


def validated_fields(config: TrainConfig) -> TrainConfig:
    """Each section, then the top level, through the settings schema (a TrainConfig built in
    code gets the same checks as one read from a file)."""
    sections = {name: validated(getattr(config, name), option_name) for name in SECTIONS}
    return validated(dataclasses.replace(config, **sections), option_name)


def _check_peak_lr(config: TrainConfig) -> None:
    """The largest learning rate the schedule reaches must be finite (huge --lr × scaling × gamma^k)."""
    optim = config.optim
    try:
        growth = max(1.0, optim.gamma) ** len(optim.milestones) if optim.schedule == "piecewise" else 1
        peak = config.effective_lr * growth
    except OverflowError:
        peak = math.inf
    if not math.isfinite(peak):
        raise RobevalError(f"--lr {optim.lr:g} reaches an infinite learning rate after batch-size "
                           "scaling and --gamma: lower --lr or --gamma")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A nested dict from a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise RobevalError(f"config file {path} does not exist")
    values = read_yaml(path, "config file") or {}
    if not isinstance(values, dict):
        raise RobevalError(f"config file {path} must hold a mapping of settings")
    return values


PRESETS: dict[str, dict[str, Any]] = {
    # Xie et al., Smooth Adversarial Training, ImageNet ResNet-50 recipe (SiLU: the best smooth
    # activation of its ResNet-50 comparison).
    "sat-imagenet-resnet50": {
        "data": {"dataset": "imagenet", "val_size": 0},
        "model": {"arch": "resnet50", "activation": "silu"},
        "adversary": {"method": "pgd", "eps": 4 / 255, "steps": 1, "step_size": 4 / 255},
        "optim": {"optimizer": "sgd", "lr": 0.1, "batch_size": 256, "base_batch_size": 256,
                  "weight_decay": 1e-4, "schedule": "piecewise", "milestones": [30, 60, 90]},
        "epochs": 100,
    },
    # Pang et al., Bag of Tricks for Adversarial Training, CIFAR-10 baseline.
    "bag-of-tricks-cifar10": {
        "data": {"dataset": "cifar10"},
        "model": {"arch": "resnet18", "activation": "relu"},
        "adversary": {"method": "pgd", "eps": 8 / 255, "steps": 10, "step_size": 2 / 255,
                      "random_start": True, "bn_mode": "eval"},
        "optim": {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4,
                  "schedule": "piecewise", "milestones": [100, 105]},
        "epochs": 110,
    },
    # Single-step FGSM training (no random start, step ε): the setting of catastrophic overfitting.
    "fgsm-cifar10": {
        "data": {"dataset": "cifar10"},
        "model": {"arch": "preact-resnet18"},
        "adversary": {"method": "fgsm", "eps": 8 / 255},
        "optim": {"schedule": "cosine", "lr": 0.1, "weight_decay": 5e-4},
        "epochs": 30,
    },
    # Input-gradient regularisation: CE + ε‖∇ₓL‖₁, the first-order version of the L∞ min-max.
    "igr-cifar10": {
        "data": {"dataset": "cifar10"},
        "model": {"arch": "preact-resnet18"},
        "adversary": {"method": "igr", "eps": 8 / 255},
        "optim": {"schedule": "cosine", "lr": 0.1, "weight_decay": 5e-4},
        "epochs": 30,
    },
    # Seconds on a CPU: for tests, CI and the quickstart.
    "ci-small": {
        "data": {"val_size": 200},
        "model": {"arch": "cnn-small"},
        "adversary": {"method": "pgd", "eps": 8 / 255, "steps": 1},
        "optim": {"optimizer": "sgd", "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4,
                  "schedule": "onecycle"},
        "epochs": 4,
        "val_pgd_steps": 5,
        "diagnostics_batch": 64,
    },
}


def preset(name: str) -> dict[str, Any]:
    """The overrides of a named preset."""
    if name not in PRESETS:
        raise RobevalError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return merge(PRESETS[name], {"preset": name})


def resolve_config(preset_name: str | None = None, config_file: str | Path | None = None,
                   overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults ← preset ← YAML file ← command-line overrides, validated."""
    values: dict[str, Any] = {}
    if config_file:
        from_file = load_yaml(config_file)
        preset_name = preset_name or from_file.get("preset")
        values = merge(values, from_file)
    if preset_name:
        values = merge(preset(preset_name), values)
    values = merge(values, overrides or {})
    return config_from_dict(values)
