"""The hardware-independent cost of an attack: image-passes counted at the model boundary.

`PassCounter` wraps a model. Every call adds the batch's length to `forward`; when the output
takes part in autograd, a hook on it adds that length to `backward` each time a gradient flows
back through it (one `backward()` or `autograd.grad` through the output = one backward pass over
the whole batch, whatever part of the output the loss uses). So a forward over 64 images is 64
image-forwards, and batch sizes, chunking and early exit do not change the unit. Attacks need no
cooperation: the evaluation engine hands them the wrapped model.
"""

from __future__ import annotations

from torch import Tensor, nn


class PassCounter(nn.Module):
    """A model that counts image-forwards and image-backwards through itself."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_images = 0
        self.backward_images = 0

    def forward(self, images: Tensor) -> Tensor:
        """The wrapped model's output; counts len(images) forwards and arms the backward count."""
        output = self.model(images)
        size = len(images)
        self.forward_images += size
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(lambda grad: self._count_backward(size))
        return output

    def _count_backward(self, size: int) -> None:
        self.backward_images += size

    def take(self) -> tuple[int, int]:
        """(forwards, backwards) counted since the last `take`, and start counting afresh."""
        counts = (self.forward_images, self.backward_images)
        self.forward_images = self.backward_images = 0
        return counts
