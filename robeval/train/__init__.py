"""The SAT trainer: methods, tricks, checkpoints and exact resume."""

from robeval.device import resolve_device  # re-exported for scripts that import it from here
from robeval.train.config import (
                                  PRESETS,
                                  AdversaryConfig,
                                  OptimConfig,
                                  TrainConfig,
                                  config_from_dict,
                                  config_to_dict,
                                  resolve_config,
)
from robeval.train.loop import TrainResult, model_for, train

__all__ = ["PRESETS", "AdversaryConfig", "OptimConfig", "TrainConfig", "TrainResult",
           "config_from_dict", "config_to_dict", "model_for", "resolve_config",
           "resolve_device", "train"]
