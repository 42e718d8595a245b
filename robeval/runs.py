"""Load a trained model back from a run folder or checkpoint file."""

from __future__ import annotations

from pathlib import Path

import torch

from robeval.checkpoints import load_checkpoint
from robeval.data import dataset_info
from robeval.errors import RobevalError
from robeval.models import NormalizedModel, load_state_dict_checked, model_for
from robeval.train.config import config_from_dict, merge


def checkpoint_path(path: str | Path) -> Path:
    """`best.pt` inside a run folder, or the file itself."""
    path = Path(path)
    return path / "best.pt" if path.is_dir() else path


def load_model(path: str | Path, device: str | torch.device = "cpu",
               **model_overrides: str) -> NormalizedModel:
    """The model saved in a robeval checkpoint, in eval mode on `device`.

    `model_overrides` (arch, activation, smooth_grad) replace what the checkpoint recorded; a
    checkpoint that does not fit the resulting architecture is a one-line error.
    """
    file = checkpoint_path(path)
    checkpoint = load_checkpoint(file, map_location=device)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise RobevalError(f"{file} is not a robeval checkpoint (no model and config inside)")
    overrides = {k: v for k, v in model_overrides.items() if v is not None}
    config = config_from_dict(merge(checkpoint["config"], {"model": overrides}))
    model = model_for(config.model, dataset_info(config.data.dataset))
    load_state_dict_checked(model, checkpoint["model"], str(file))
    return model.to(device).eval()
