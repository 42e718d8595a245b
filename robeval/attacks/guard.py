"""The model as the evaluation sees it: inputs copied and cast, outputs held to a contract.

`GuardedModel` wraps the model under evaluation. Every call

- hands the model a private copy of the images, cast to the model's floating dtype (float16,
  bfloat16 and float64 models are evaluated like float32 ones), so a model that changes its
  input in place (`x.mul_(0.5)`) can never alter robeval's own tensors; such a model is noticed
  (`mutates_input`) and named in the run's notes;
- checks the output contract: a floating-point tensor of shape (images, classes) with every
  value finite. A breach raises `ModelContractError`, which the engine turns into one line
  naming the model and the batch, before any number of that batch is stored;
- returns the logits as float32, so losses, margins and stored numbers do not depend on the
  model's dtype;
- turns an exception raised inside the model (a bug in its forward, a tensor on the wrong
  device) into a `ModelContractError` naming the model and the cause; running out of memory
  passes through unchanged, because the engine answers it with a smaller batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robeval.errors import RobevalError, first_line


class ModelContractError(RobevalError):
    """The model broke the output contract (non-finite, wrong shape or type of logits)."""


class GuardedModel(nn.Module):
    """A model whose calls are isolated from the caller's tensors and checked (see module doc)."""

    def __init__(self, model: nn.Module, num_classes: int, name: str):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.name = name
        self.dtype = model_dtype(model)
        self.mutates_input = False
        self.training = model.training  # wrappers that call .train(self.training) must not flip it

    def forward(self, images: Tensor) -> Tensor:
        """The model's float32 logits on a private copy of `images` (see the module doc)."""
        private = images.to(self.dtype, copy=True)
        try:
            output = self.model(private)
        except RobevalError:
            raise
        except Exception as err:
            if out_of_memory(err):
                raise
            raise ModelContractError(f"{self.name} raised {type(err).__name__} on a batch of "
                                     f"{len(images)} images ({first_line(err)}): fix the model's "
                                     "forward") from err
        if not self.mutates_input:
            with torch.no_grad():
                self.mutates_input = not torch.equal(private, images.to(self.dtype))
        return check_output(output, len(images), self.num_classes, self.name).float()


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` says the device ran out of memory (left to the engine's batch halving)."""
    return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError))


def check_materialised(model: nn.Module, name: str) -> None:
    """A one-line error for a model whose weights are placeholders on the meta device."""
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RobevalError(f"{name} has parameters on the meta device, without values: load its "
                           "weights first (e.g. model.to_empty(device='cpu') then load_state_dict)")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (float32 if none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def check_output(output: object, n: int, num_classes: int, name: str) -> Tensor:
    """`output` if it is finite floating-point logits of shape (n, num_classes), else an error."""
    if not isinstance(output, Tensor):
        kind = type(output).__name__
        raise ModelContractError(f"{name} returned a {kind}, not a tensor of logits: make forward "
                                 f"return one tensor of shape (N, {num_classes})")
    if not output.is_floating_point():
        raise ModelContractError(f"{name} returned {output.dtype} outputs: logits must be floating "
                                 "point (return the scores before argmax)")
    if tuple(output.shape) != (n, num_classes):
        raise ModelContractError(f"{name} returned shape {tuple(output.shape)} for {n} images: logits "
                                 f"must have shape ({n}, {num_classes})")
    finite = torch.isfinite(output).all(1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        bad = int((~finite).sum())
        raise ModelContractError(
            f"{name} returned non-finite logits (NaN or ±inf) for {bad} of {n} images, the first at "
            f"position {first}: check its weights and normalisation (NaN weights, a std of 0)")
    return output
