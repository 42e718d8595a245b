"""robeval: train and evaluate adversarially robust image classifiers.

The package follows the user flow: ``data`` → ``models`` (+ ``activations``) → ``train`` →
``attacks`` → ``evaluate`` → ``results`` → ``report``; ``cli`` is a thin layer over them.
"""

__version__ = "0.1.0"
