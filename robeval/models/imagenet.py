"""ImageNet architectures from timm, with every activation replaced by the chosen one.

The networks are timm's, not re-implemented; only their non-linearities are swapped, which is
exactly what SAT does for ResNet-50, ResNeXt and EfficientNet.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robeval.errors import RobevalError
from robeval.models import MODELS

# Module types that timm uses as activations and that SAT replaces.
_ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.ELU, nn.CELU, nn.LeakyReLU,
                     nn.Softplus, nn.Hardswish, nn.Mish)


def swap_activations(module: nn.Module, act: Callable[[], nn.Module]) -> int:
    """Replace every activation module inside `module` by `act()`; returns how many."""
    swapped = 0
    for name, child in module.named_children():
        if isinstance(child, _ACTIVATION_TYPES):
            setattr(module, name, act())
            swapped += 1
        else:
            swapped += swap_activations(child, act)
    return swapped


def _timm_builder(timm_name: str) -> Callable[..., nn.Module]:
    def build(act: Callable[[], nn.Module], num_classes: int = 1000,
              in_channels: int = 3) -> nn.Module:
        try:
            import timm
        except ImportError as err:  # pragma: no cover - timm is a dependency
            raise RobevalError("ImageNet models need timm: pip install timm") from err
        net = timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                                in_chans=in_channels)
        if swap_activations(net, act) == 0:
            raise RobevalError(f"timm model {timm_name} has no activation modules to swap")
        return net

    build.__doc__ = f"timm's {timm_name} with the chosen activation swapped in."
    return build


MODELS.add("resnet50", _timm_builder("resnet50"), aliases=("resnet-50",))
MODELS.add("resnext50", _timm_builder("resnext50_32x4d"), aliases=("resnext50-32x4d",))
MODELS.add("efficientnet-b0", _timm_builder("efficientnet_b0"), aliases=("efficientnet",))
