"""The model registry: CIFAR architectures, timm ImageNet networks, normalisation and loading.

Architectures are built with each activation and searched for leftover non-linearities of
another type; parameter names are compared with the reference layouts (AutoAttack's ResNet-18,
RobustBench's WideResNet and the fast-adversarial-training PreAct ResNet-18), and where
robustbench is installed its own modules are loaded into ours and must give the same logits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from robeval.activation_kernels import ELU
from robeval.activations import ACTIVATIONS, ParametricSoftplus, SmoothReLU, SurrogateReLU
from robeval.errors import RobevalError, UnknownNameError
from robeval.models import (
    MODELS,
    NormalizedModel,
    build_model,
    load_state_dict_checked,
    model_names,
    resolve_arch,
)
from robeval.models.imagenet import _ACTIVATION_TYPES, swap_activations

CIFAR_ARCHS = ["cnn-small", "preact-resnet18", "resnet18", "wrn-16-2"]
IMAGENET_ARCHS = ["resnet50", "resnext50", "efficientnet-b0"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)

# Every module type that acts as a non-linearity in these networks.
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.ELU, nn.CELU, nn.LeakyReLU,
                    nn.PReLU, nn.Softplus, nn.Tanh, nn.SELU, nn.Hardswish, nn.Mish,
                    ParametricSoftplus, SmoothReLU, SurrogateReLU)


def _activations(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ACTIVATION_TYPES)]


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


# --- CIFAR architectures ---------------------------------------------------------------------

@pytest.mark.parametrize(("in_channels", "num_classes"), [(1, 10), (3, 100)])
@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_cifar_model_outputs_batch_by_classes(arch, in_channels, num_classes):
    model = build_model(arch, num_classes=num_classes, in_channels=in_channels)
    assert isinstance(model, NormalizedModel)
    assert model.mean.shape == (1, in_channels, 1, 1)
    out = _logits(model, torch.rand(2, in_channels, 32, 32))
    assert out.shape == (2, num_classes) and torch.isfinite(out).all()


def test_wrn_28_4_builds_with_four_blocks_per_stage():
    net = build_model("wrn-28-4").net
    assert [len(stage.layer) for stage in (net.block1, net.block2, net.block3)] == [4, 4, 4]
    assert net.fc.in_features == 64 * 4
    assert net.block1.layer[0].conv1.out_channels == 16 * 4


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_gelu_replaces_every_relu(arch):
    relu_slots = len(_activations(build_model(arch, activation="relu")))
    acts = _activations(build_model(arch, activation="gelu"))
    assert len(acts) == relu_slots > 0
    assert all(type(m) is nn.GELU for m in acts)


@pytest.mark.parametrize("name", ACTIVATIONS.names())
def test_every_activation_module_has_the_requested_type(name):
    expected_type = type(ACTIVATIONS.get(name).module())
    acts = _activations(build_model("cnn-small", activation=name))
    assert len(acts) == 4
    assert all(type(m) is expected_type for m in acts)


def test_activation_parameters_reach_every_module():
    acts = _activations(build_model("wrn-16-2", activation="elu(alpha=0.5)"))
    assert acts and all(type(m) is ELU and m.alpha == 0.5 for m in acts)


@pytest.mark.parametrize("arch", ["preact-resnet18", "wrn-16-2"])
def test_smooth_grad_both_uses_surrogate_relu_everywhere(arch):
    acts = _activations(build_model(arch, activation="relu", smooth_grad="both"))
    assert acts and all(type(m) is SurrogateReLU for m in acts)
    assert all(m.smooth_attacker and m.smooth_optimizer for m in acts)


def test_smooth_grad_with_another_activation_is_a_user_error():
    with pytest.raises(RobevalError, match="relu"):
        build_model("cnn-small", activation="gelu", smooth_grad="both")


# --- normalisation ---------------------------------------------------------------------------

def test_normalized_model_standardises_before_the_network():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5))
    model = NormalizedModel(net, CIFAR_MEAN, CIFAR_STD)
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - mean) / std))
    assert not torch.allclose(model(x), net(x))


def test_mean_and_std_are_buffers_saved_in_the_state_dict():
    model = build_model("cnn-small", mean=CIFAR_MEAN, std=CIFAR_STD)
    state = model.state_dict()
    torch.testing.assert_close(state["mean"].flatten(), torch.tensor(CIFAR_MEAN))
    torch.testing.assert_close(state["std"].flatten(), torch.tensor(CIFAR_STD))
    assert all(p is not model.mean and p is not model.std for p in model.parameters())
    fresh = build_model("cnn-small")  # mean 0, std 1 until the checkpoint restores them
    load_state_dict_checked(fresh, state, "checkpoint")
    torch.testing.assert_close(fresh.std, model.std)


# --- parameter names -------------------------------------------------------------------------

def test_resnet18_keys_follow_the_autoattack_layout():
    keys = set(build_model("resnet18").state_dict())
    assert {"net.conv1.weight", "net.bn1.weight", "net.bn1.running_mean",
            "net.layer1.0.conv1.weight", "net.layer2.0.shortcut.0.weight",
            "net.layer2.0.shortcut.1.weight", "net.linear.weight", "net.linear.bias"} <= keys
    assert "net.layer1.0.shortcut.0.weight" not in keys  # same width and stride: identity


def test_wrn_keys_follow_the_robustbench_layout():
    keys = set(build_model("wrn-16-2").state_dict())
    assert {"net.conv1.weight", "net.block1.layer.0.bn1.weight",
            "net.block1.layer.0.convShortcut.weight", "net.block2.layer.0.convShortcut.weight",
            "net.block3.layer.1.conv2.weight", "net.bn1.weight", "net.fc.weight"} <= keys
    assert "net.block1.layer.1.convShortcut.weight" not in keys


def test_wrn_width_one_first_stage_has_no_shortcut_conv():
    keys = set(build_model("wrn-10-1").state_dict())
    assert "net.block1.layer.0.convShortcut.weight" not in keys
    assert "net.block2.layer.0.convShortcut.weight" in keys


def test_preact_resnet18_keys():
    keys = set(build_model("preact-resnet18").state_dict())
    assert {"net.conv1.weight", "net.layer1.0.bn1.weight", "net.layer1.0.conv1.weight",
            "net.layer2.0.shortcut.0.weight", "net.bn.weight", "net.linear.weight"} <= keys
    assert "net.bn1.weight" not in keys  # no post-stem BatchNorm in the pre-activation net


def _robustbench_architecture(module: str):
    """robustbench's architecture file `module`, loaded without importing robustbench itself."""
    spec = importlib.util.find_spec("robustbench")
    assert spec is not None and spec.submodule_search_locations, "robustbench is a dependency"
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "model_zoo" / "architectures" / f"{module}.py"
    file_spec = importlib.util.spec_from_file_location(f"_robustbench_{module}", path)
    loaded = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(loaded)
    return loaded


def _randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial running statistics, so that eval-mode outputs depend on them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def _assert_loads_reference(arch: str, reference: nn.Module) -> None:
    _randomise_batchnorm(reference)
    model = build_model(arch)
    state = {f"net.{k}": v for k, v in reference.state_dict().items()}
    state.update(mean=model.mean, std=model.std)
    load_state_dict_checked(model, state, f"robustbench {arch}")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(_logits(model, x), _logits(reference, x))


def test_robustbench_resnet18_loads_and_gives_the_same_logits():
    resnet = _robustbench_architecture("resnet")
    _assert_loads_reference("resnet18", resnet.ResNet18())


def test_robustbench_preact_resnet18_loads_and_gives_the_same_logits():
    resnet = _robustbench_architecture("resnet")
    reference = resnet.PreActResNet(resnet.PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)
    _assert_loads_reference("preact-resnet18", reference)


def test_robustbench_wide_resnet_loads_and_gives_the_same_logits():
    wide_resnet = _robustbench_architecture("wide_resnet")
    _assert_loads_reference("wrn-16-2", wide_resnet.WideResNet(depth=16, widen_factor=2))


# --- checked loading -------------------------------------------------------------------------

def test_loading_another_architecture_is_a_one_line_error():
    model = build_model("resnet18")
    before = model.net.conv1.weight.clone()
    with pytest.raises(RobevalError) as info:
        load_state_dict_checked(model, build_model("cnn-small").state_dict(), "small.pt")
    message = str(info.value)
    assert "\n" not in message
    assert "small.pt" in message and "missing" in message and "unexpected" in message
    torch.testing.assert_close(model.net.conv1.weight, before)


def test_loading_weights_for_other_num_classes_names_the_shapes():
    state = build_model("cnn-small", num_classes=100).state_dict()
    with pytest.raises(RobevalError) as info:
        load_state_dict_checked(build_model("cnn-small", num_classes=10), state, "c100.pt")
    message = str(info.value)
    assert "\n" not in message
    assert "other shapes" in message and "(100, 128) vs (10, 128)" in message


def test_loading_relu_weights_into_a_smoothrelu_model_is_an_error():
    state = build_model("cnn-small").state_dict()
    with pytest.raises(RobevalError, match="log_alpha"):
        load_state_dict_checked(build_model("cnn-small", activation="smoothrelu"), state, "ckpt")


def test_loading_the_same_architecture_restores_the_outputs():
    source = build_model("cnn-small", mean=CIFAR_MEAN, std=CIFAR_STD)
    _randomise_batchnorm(source)
    target = build_model("cnn-small")
    load_state_dict_checked(target, source.state_dict(), "ckpt")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(_logits(target, x), _logits(source, x))


# --- names -----------------------------------------------------------------------------------

def test_unknown_model_lists_the_known_names():
    with pytest.raises(UnknownNameError) as info:
        build_model("resnet1000")
    message = str(info.value)
    assert "resnet1000" in message and all(name in message for name in MODELS.names())


def test_model_names_and_aliases():
    assert set(CIFAR_ARCHS[:3] + IMAGENET_ARCHS + ["wrn-34-10"]) <= set(MODELS.names())
    assert "wrn-D-W" in model_names()
    assert resolve_arch("wideresnet") == "wrn-34-10"
    assert resolve_arch("PreActResNet18") == "preact-resnet18"
    assert resolve_arch("WRN-70-16") == "wrn-70-16"


@pytest.mark.parametrize("arch", ["wrn-30-10", "wrn-4-2", "wrn-16-0"])
def test_invalid_wrn_depth_or_width_is_a_user_error(arch):
    with pytest.raises(RobevalError, match="6n\\+4"):
        resolve_arch(arch)
    with pytest.raises(RobevalError, match=arch):
        build_model(arch)


# --- ImageNet (timm) -------------------------------------------------------------------------

@pytest.mark.parametrize("arch", IMAGENET_ARCHS)
def test_timm_model_with_gelu_has_only_gelu_activations(arch):
    model = build_model(arch, activation="gelu", num_classes=1000)
    swappable = [m for m in model.modules() if isinstance(m, _ACTIVATION_TYPES)]
    assert swappable and all(type(m) is nn.GELU for m in swappable)
    assert not any(isinstance(m, (nn.ReLU, nn.SiLU)) for m in model.modules())
    out = _logits(model, torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_swap_activations_counts_and_replaces_nested_modules():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(),
                        nn.Sequential(nn.SiLU(), nn.Sigmoid(), nn.Sequential(nn.GELU())))
    assert swap_activations(net, nn.Tanh) == 3
    assert [type(m) for m in net.modules() if isinstance(m, (nn.Tanh, nn.Sigmoid))] == [
        nn.Tanh, nn.Tanh, nn.Sigmoid, nn.Tanh]


def test_timm_resnet50_with_smooth_grad_uses_surrogate_relu():
    acts = _activations(build_model("resnet50", smooth_grad="both", num_classes=10))
    assert acts and all(type(m) is SurrogateReLU for m in acts)
