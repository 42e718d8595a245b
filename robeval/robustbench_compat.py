"""Let RobustBench run on the PyPI release of AutoAttack (``pyautoattack``).

RobustBench 1.1.1 does ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState`` (in ``robustbench/eval.py``) and calls the API of
the AutoAttack package that is only installable from GitHub::

    AutoAttack(model, norm=..., eps=..., version="standard", device=..., log_path=...)
    adversary.run_standard_evaluation(x, y, bs=..., state_path=...)  # returns x_adv

The same attacks are on PyPI as ``pyautoattack``, imported under that name and with another
signature: keyword-only ``attacks=`` and ``batch_size=``, no ``log_path`` (it logs through the
``logging`` logger ``"auto-attack"``), ``device`` defaulting to ``"cpu"``, and
``run_standard_evaluation`` returning ``(x_adv, y_adv)``.

:func:`install` registers a small ``autoattack`` module whose :class:`AutoAttack` keeps the
original signature and runs pyautoattack's attacks unchanged, so ``import robustbench`` works
without editing robustbench. When the original ``autoattack`` package is importable, nothing is
registered and that package is used.

Installing is process-wide and harmless: the adapter only exists where no ``autoattack`` does.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from robeval.errors import RobevalError

try:
    import pyautoattack
    import pyautoattack.state
except ImportError:  # install() reports it with the fix
    pyautoattack = None

_BASE = object if pyautoattack is None else pyautoattack.AutoAttack


class AutoAttack(_BASE):
    """AutoAttack with the GitHub package's constructor and methods, backed by pyautoattack.

    Arguments map as follows: ``norm``, ``eps``, ``seed`` and ``version`` pass through;
    ``attacks_to_run`` becomes ``attacks`` (an empty list becomes ``None``, as pyautoattack
    expects outside ``version="custom"``); ``device`` is always passed, and ``None`` (the
    default here, ``"cuda"`` in the original) picks CUDA when available, else CPU; ``verbose``
    sets whether progress lines are produced; ``log_path`` appends those lines to that file
    while attacks run; ``is_tf_model=True`` is refused (pyautoattack has no TensorFlow code).
    Attack objects (``apgd``, ``apgd_targeted``, ``fab``, ``square``) are pyautoattack's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float = 0.3,
        seed: int | None = None,
        verbose: bool = True,
        attacks_to_run: Sequence[str] = (),
        version: str = "standard",
        is_tf_model: bool = False,
        device: torch.device | str | None = None,
        log_path: str | Path | None = None,
    ):
        """Build pyautoattack's AutoAttack from the original arguments (see the class doc)."""
        _require_pyautoattack()
        if is_tf_model:
            raise RobevalError("pyautoattack cannot attack TensorFlow models: pass a torch.nn.Module")
        super().__init__(
            model,
            attacks=list(attacks_to_run) or None,
            device=_resolve_device(device),
            eps=eps,
            norm=norm,
            seed=seed,
            version=version,
        )
        if self.attacks_to_run is None:
            self.attacks_to_run = []
        self.verbose = verbose
        self.log_path = log_path

    def run_standard_evaluation(
        self,
        x_orig: torch.Tensor,
        y_orig: torch.Tensor,
        bs: int = 250,
        return_labels: bool = False,
        state_path: str | Path | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the attacks in turn; return ``x_adv``, or ``(x_adv, y_adv)`` if ``return_labels``.

        ``bs`` becomes pyautoattack's ``batch_size``. ``state_path`` must not exist yet:
        pyautoattack 0.2.0 writes state files it cannot read back, so resuming is refused.
        """
        state_path = _new_state_path(state_path)
        with self._logging_to_file():
            x_adv, y_adv = super().run_standard_evaluation(
                x_orig, y_orig, batch_size=bs, state_path=state_path
            )
        return (x_adv, y_adv) if return_labels else x_adv

    def run_standard_evaluation_individual(
        self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250, return_labels: bool = False
    ) -> dict:
        """Run each attack on the clean inputs alone; return ``{attack: x_adv}`` (or pairs)."""
        attacks = list(self.attacks_to_run)
        results = {}
        try:
            for attack in attacks:
                self.attacks_to_run = [attack]
                results[attack] = self.run_standard_evaluation(
                    x_orig, y_orig, bs=bs, return_labels=return_labels
                )
        finally:
            self.attacks_to_run = attacks
        return results

    def set_version(self, version: str = "standard") -> None:
        """Set the attacks and their parameters for ``standard``, ``plus`` or ``rand``."""
        self._set_version(version)

    @contextlib.contextmanager
    def _logging_to_file(self) -> Iterator[None]:
        """While attacks run, append the ``auto-attack`` logger's lines to ``log_path``."""
        if self.log_path is None:
            yield
            return
        handler = logging.FileHandler(self.log_path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        level = self.logger.level
        self.logger.addHandler(handler)
        self.logger.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            self.logger.removeHandler(handler)
            self.logger.setLevel(level)
            handler.close()


def _require_pyautoattack() -> None:
    """Fail with the fix when pyautoattack is not installed."""
    if pyautoattack is None:
        raise RobevalError("robustbench needs AutoAttack: pip install pyautoattack")


def _resolve_device(device: torch.device | str | None) -> torch.device | str:
    """The given device, or CUDA when available and CPU otherwise."""
    if device is not None:
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _new_state_path(state_path: str | Path | None) -> Path | None:
    """``state_path`` as a Path; an existing file is refused because it cannot be resumed."""
    if state_path is None:
        return None
    state_path = Path(state_path)
    if state_path.exists():
        raise RobevalError(
            f"AutoAttack state file {state_path} exists and pyautoattack cannot resume from it: "
            "delete it or pass a new path"
        )
    return state_path


def _adapter_module() -> types.ModuleType:
    """A package-like ``autoattack`` module exposing the adapter and pyautoattack's state."""
    module = types.ModuleType("autoattack", "AutoAttack's original API on top of pyautoattack.")
    module.__path__ = []  # a package, so unknown submodules fail with ModuleNotFoundError
    module.__version__ = pyautoattack.__version__
    module.AutoAttack = AutoAttack
    module.state = pyautoattack.state
    return module


def install() -> None:
    """Make ``import autoattack`` work for robustbench; a no-op if ``autoattack`` exists.

    Registers ``autoattack`` and ``autoattack.state`` in ``sys.modules`` when neither the
    original package nor an earlier install provides them. Safe to call any number of times.
    """
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    _require_pyautoattack()
    sys.modules["autoattack.state"] = pyautoattack.state
    sys.modules["autoattack"] = _adapter_module()


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block, every `torch.load` (robustbench's and torch.hub's) is weights-only.

    robustbench loads its checkpoints, ensembles included, with a bare `torch.load`, which
    unpickles arbitrary objects under torch versions whose default is not weights-only; a
    downloaded or planted file must never run code, whatever the installed torch.
    """
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def import_robustbench() -> types.ModuleType:
    """Install the adapter if needed, then import and return the ``robustbench`` package."""
    install()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            warnings.filterwarnings("ignore", "Importing from timm", DeprecationWarning)
            return importlib.import_module("robustbench")
    except ModuleNotFoundError as error:
        if error.name == "pkg_resources":
            raise RobevalError("robustbench needs pkg_resources: pip install 'setuptools<81'") from error
        if error.name == "robustbench":
            raise RobevalError("robustbench is not installed: pip install robustbench") from error
        raise
