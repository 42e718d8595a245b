"""CPU forms of the activations that torch computes with a slow expm1 or log1p.

On a CPU torch evaluates ELU, CELU and Softplus with expm1/log1p one element at a time: in an
epoch of an ELU cnn-small the ELU forwards took half the time, five times all the forward
convolutions, and the network trained at half a ReLU network's speed. The forms here compute
the same functions with the vectorised exp and log (e.g. ELU as exp(min(x, 0)) − 1 +
max(x, 0)). They differ from torch's by at most about 1e-7 in absolute terms:
exp(x) − 1 keeps the absolute, not the relative, precision of expm1 near 0. The backward
passes of ELU, CELU and Softplus are torch's own derivative kernels applied to the input, so
the gradients equal torch's exactly, and are differentiable again: double backpropagation
(input-gradient regularisation) works through them. On CUDA torch's fused kernels are
faster and are used unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ELUFunction(torch.autograd.Function):
    """α(exp(s·x) − 1) for x ≤ 0, x otherwise; the backward pass is torch's, from the input."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float, input_scale: float) -> Tensor:
        negative = x.clamp(max=0)
        if input_scale != 1.0:
            negative.mul_(input_scale)
        negative = negative.exp_().sub_(1)
        if alpha != 1.0:
            negative.mul_(alpha)
        ctx.save_for_backward(x)
        ctx.alpha, ctx.input_scale = alpha, input_scale
        # `negative` is exactly 0 where x > 0, so adding max(x, 0) picks each branch;
        # torch.where would cost three times the exp
        return negative.add_(x.clamp(min=0))

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        grad = torch.ops.aten.elu_backward(grad_output, ctx.alpha, 1.0, ctx.input_scale,
                                           False, x)
        return grad, None, None


class _SoftplusFunction(torch.autograd.Function):
    """log(1 + exp(βx))/β written as max(x, 0) + log(1 + exp(−β|x|))/β, stable for any x."""

    @staticmethod
    def forward(ctx, x: Tensor, beta: float, threshold: float) -> Tensor:
        tail = (x * -beta).abs_().neg_().exp_().add_(1).log_()
        if beta != 1.0:
            tail.div_(beta)
        ctx.save_for_backward(x)
        ctx.beta, ctx.threshold = beta, threshold
        return x.clamp(min=0).add_(tail)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (x,) = ctx.saved_tensors
        grad = torch.ops.aten.softplus_backward(grad_output, x, ctx.beta, ctx.threshold)
        return grad, None, None


def _vectorised_form_applies(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.is_floating_point()


def elu(x: Tensor, alpha: float = 1.0, input_scale: float = 1.0) -> Tensor:
    """ELU (CELU with `input_scale` 1/α), by exp on a CPU and torch's kernel elsewhere."""
    if not _vectorised_form_applies(x):
        return torch.ops.aten.elu(x, alpha, 1.0, input_scale)
    return _ELUFunction.apply(x, float(alpha), float(input_scale))


# Above βx = 17, 1 + exp(−βx) rounds to 1 in float32, so the form returns x exactly as torch's
# threshold does; a lower threshold changes the function, and torch's kernel computes it.
_LOWEST_THRESHOLD = 17.0


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """Softplus log(1 + exp(βx))/β (x where βx > `threshold`), by exp and log on a CPU and
    torch's kernel elsewhere."""
    if not _vectorised_form_applies(x) or beta <= 0 or threshold < _LOWEST_THRESHOLD:
        return F.softplus(x, beta, threshold)
    return _SoftplusFunction.apply(x, float(beta), float(threshold))


class ELU(nn.ELU):
    """torch's ELU module computed by `elu` (an nn.ELU, so code that finds ELUs finds it)."""

    def forward(self, x: Tensor) -> Tensor:
        return elu(x, self.alpha)


class CELU(nn.CELU):
    """torch's CELU module computed by `elu` with input scale 1/α."""

    def forward(self, x: Tensor) -> Tensor:
        return elu(x, self.alpha, 1.0 / self.alpha)


class Softplus(nn.Softplus):
    """torch's Softplus module computed by `softplus`."""

    def forward(self, x: Tensor) -> Tensor:
        return softplus(x, self.beta, self.threshold)


class _SmoothReLUFunction(torch.autograd.Function):
    """p − log(αp + 1)/α with p = max(x, 0), and its gradients for x and the learnable α.

    Autograd through the composite form runs about ten full-size passes in the backward
    (clamp's alone costs three exps); this one runs about as many light ones. The backward is
    written with differentiable ops of the inputs, so double backpropagation works through it;
    without a graph to build it works in place.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor) -> Tensor:
        positive = x.clamp(min=0)
        ctx.save_for_backward(x, alpha)
        return positive - (positive * alpha).add_(1).log_().div_(alpha)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, alpha = ctx.saved_tensors
        positive = x.clamp(min=0)
        shifted = positive * alpha + 1                       # αp + 1
        if torch.is_grad_enabled():                          # double backward: keep the graph
            ratio = positive / shifted
            grad_x = grad_output * ratio * alpha
            grad_alpha = (grad_output * (shifted.log() / alpha ** 2 - ratio / alpha)).sum()
            return grad_x, grad_alpha
        ratio = positive.div_(shifted)                       # p / (αp + 1)
        grad_x = grad_output * ratio
        grad_x.mul_(alpha)
        # ∂f/∂α = log(αp + 1)/α² − p/(α(αp + 1))
        dalpha = shifted.log_().div_(alpha * alpha).sub_(ratio.div_(alpha))
        grad_alpha = torch.dot(grad_output.reshape(-1), dalpha.reshape(-1)) \
            if grad_output.is_contiguous() else (grad_output * dalpha).sum()
        return grad_x, grad_alpha.reshape(alpha.shape)


def smooth_relu(x: Tensor, alpha: Tensor) -> Tensor:
    """SAT's SmoothReLU x − log(αx + 1)/α for x ≥ 0, else 0, with a tensor α (learnable)."""
    alpha = alpha.to(x.dtype)
    if not _vectorised_form_applies(x):
        positive = x.clamp(min=0)
        return positive - torch.log1p(alpha * positive) / alpha
    return _SmoothReLUFunction.apply(x, alpha)
