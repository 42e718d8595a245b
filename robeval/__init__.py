"""robeval: train and evaluate adversarially robust image classifiers.

The package follows the user flow: ``data`` → ``models`` (+ ``activations``) → ``train`` →
``attacks`` → ``evaluate`` → ``results`` → ``report``; ``cli`` is a thin layer over them.
``evaluate_model``, ``diagnose_model`` and ``attack_tensors`` (from ``robeval.api``) evaluate
any ``nn.Module`` from Python; they are imported on first use, so ``import robeval`` stays light.
"""

from robeval.version import __version__

_API = ("evaluate_model", "diagnose_model", "attack_tensors")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The Python API, imported when first asked for."""
    if name in _API:
        from robeval import api

        return getattr(api, name)
    raise AttributeError(f"module 'robeval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
