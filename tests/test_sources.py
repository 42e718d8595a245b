"""load_source: robeval runs, plain state_dict files and RobustBench checkpoints, all offline."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from robeval import runs
from robeval.errors import RobevalError
from robeval.models import build_model
from robeval.robustbench_compat import import_robustbench
from robeval.sources import ModelSource, load_source
from robeval.train import resolve_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RB_NAME = "Sehwag2021Proxy_R18"  # CIFAR-10 Linf, robustbench's ResNet18: quick to build on CPU



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A robeval run folder trained for one epoch on a digits subset."""
    config = resolve_config("ci-small", overrides={"epochs": 1,
                                                   "data": {"train_subset": 128, "val_size": 64}})
    out = tmp_path_factory.mktemp("sources") / "run"
    train(config, out, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def zoo():
    """robustbench's CIFAR-10 Linf model zoo."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_of(call, *args, **kwargs) -> str:
    """The one-line message of the RobevalError that `call` raises."""
    with pytest.raises(RobevalError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with perturbed weights and BatchNorm statistics (not input normalisation), eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and name.rsplit(".", 1)[-1] not in ("mu", "sigma"):
                noise = torch.rand(tensor.shape, generator=generator) - 0.5
                tensor.copy_(1 + noise if name.endswith("running_var") else tensor + 0.02 * noise)
    return model.eval()


def images(channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(4, channels, size, size, generator=torch.Generator().manual_seed(2))


# robeval runs


def test_robeval_folder_and_best_pt_match_runs_load_model(run_dir):
    reference = runs.load_model(run_dir)
    x = images(channels=1)
    for spec in (run_dir, run_dir / "best.pt"):
        source = load_source(str(spec))
        assert isinstance(source, ModelSource) and source.kind == "robeval"
        assert not source.model.training
        assert source.name == "run"
        assert (source.dataset, source.norm, source.num_classes) == ("digits", "linf", 10)
        assert source.eps == pytest.approx(8 / 255)
        assert source.checkpoint_hash == sha256(run_dir / "best.pt")
        assert source.config["model"]["arch"] == "cnn-small"
        with torch.no_grad():
            assert torch.equal(source.model(x), reference(x))


def test_robeval_last_pt_is_named_with_its_folder(run_dir):
    source = load_source(str(run_dir / "last.pt"))
    assert source.name == "run/last.pt"
    assert source.checkpoint_hash == sha256(run_dir / "last.pt")


def test_robeval_activation_override_passes_through(run_dir):
    source = load_source(str(run_dir), activation="silu")
    reference = runs.load_model(run_dir, activation="silu")
    x = images(channels=1)
    assert source.config["model"]["activation"] == "silu"
    with torch.no_grad():
        assert torch.equal(source.model(x), reference(x))


def test_robeval_dataset_must_agree_in_classes_and_channels(run_dir):
    assert "10 classes but cifar100 has 100: pass --dataset digits" in error_of(
        load_source, str(run_dir), dataset="cifar100")
    assert "1-channel images but cifar10 has 3" in error_of(load_source, str(run_dir), dataset="cifar10")
    assert load_source(str(run_dir), dataset="digits").dataset == "digits"


# plain state_dict files


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    """A robeval ResNet-18 (CIFAR-10 shape) with random weights and BN statistics."""
    torch.manual_seed(0)
    return randomised(build_model("resnet18", num_classes=10, in_channels=3))


@pytest.mark.parametrize("layout", ["plain", "module", "wrapped", "model_key"])
def test_plain_state_dict_loads_with_identity_normalisation(tmp_path, resnet18, layout):
    state = resnet18.net.state_dict()
    saved = {"plain": state, "module": {f"module.{k}": v for k, v in state.items()},
             "wrapped": {"state_dict": state, "epoch": torch.tensor(3)},
             "model_key": {"model": {f"module.{k}": v for k, v in state.items()}}}[layout]
    file = tmp_path / "model_test.pt"
    torch.save(saved, file)
    source = load_source(str(file), arch="resnet18")
    assert (source.kind, source.name, source.num_classes) == ("state_dict", "model_test.pt", 10)
    assert (source.dataset, source.eps, source.norm) == (None, None, None)
    assert source.config == {"arch": "resnet18", "activation": "relu"}
    assert source.checkpoint_hash == sha256(file)
    assert not source.model.training
    x = images()
    with torch.no_grad():
        assert torch.equal(source.model(x), resnet18.net(x))


class QuantisingWrapper(torch.nn.Module):
    """A defence around a network: quantises its input; its own buffer sits beside the network's."""

    def __init__(self, net: torch.nn.Module, attribute: str):
        super().__init__()
        setattr(self, attribute, net)
        self.attribute = attribute
        self.register_buffer("levels", torch.tensor(8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attribute)(torch.round(x * self.levels) / self.levels)


@pytest.mark.parametrize("attribute", ["module", "model"])
@pytest.mark.parametrize("data_parallel", [False, True])
def test_a_wrapper_state_dict_is_refused_not_loaded_without_its_wrapper(tmp_path, resnet18, attribute,
                                                                        data_parallel):
    state = QuantisingWrapper(resnet18.net, attribute).state_dict()
    if data_parallel:
        state = {f"module.{key}": value for key, value in state.items()}
    file = tmp_path / "wrapper.pt"
    torch.save(state, file)
    message = error_of(load_source, str(file), arch="resnet18")
    assert "does not match the architecture --arch resnet18" in message and "1 left over" in message
    assert "levels" in message and "evaluate_model" in message


def test_a_state_dict_missing_a_key_names_it(tmp_path, resnet18):
    state = {f"module.{k}": v for k, v in resnet18.net.state_dict().items() if k != "linear.bias"}
    file = tmp_path / "partial.pt"
    torch.save(state, file)
    message = error_of(load_source, str(file), arch="resnet18")
    assert "1 missing (e.g. linear.bias)" in message


def test_plain_state_dict_of_a_whole_model_keeps_its_normalisation(tmp_path):
    model = randomised(build_model("cnn-small", num_classes=10, in_channels=3,
                                   mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25)))
    file = tmp_path / "whole.pt"
    torch.save(model.state_dict(), file)
    source = load_source(str(file), arch="cnn-small", dataset="cifar10")
    assert source.dataset == "cifar10"
    x = images()
    with torch.no_grad():
        assert torch.equal(source.model(x), model(x))


def test_plain_state_dict_needs_arch(tmp_path, resnet18):
    file = tmp_path / "model_test.pt"
    torch.save(resnet18.net.state_dict(), file)
    message = error_of(load_source, str(file))
    assert "plain state_dict: pass --arch NAME" in message and "resnet18" in message


def test_plain_state_dict_with_wrong_arch_is_a_mismatch(tmp_path, resnet18):
    file = tmp_path / "model_test.pt"
    torch.save(resnet18.net.state_dict(), file)
    assert "does not match the architecture" in error_of(load_source, str(file), arch="preact-resnet18")


def test_file_without_tensors_is_refused(tmp_path):
    file = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "note": "nothing"}, file)
    assert "holds no state_dict" in error_of(load_source, str(file), arch="resnet18")


@pytest.mark.parametrize("spec", ["corrupt.pt", "folder"])
def test_corrupt_or_missing_checkpoint_is_one_line(tmp_path, spec):
    (tmp_path / "corrupt.pt").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    (tmp_path / "folder").mkdir()
    message = error_of(load_source, str(tmp_path / spec), arch="resnet18")
    assert ("corrupt" in message) if spec == "corrupt.pt" else ("does not exist" in message)


# RobustBench checkpoints


def rb_file(model_dir: Path, name: str = RB_NAME, threat: str = "Linf") -> Path:
    return model_dir / "cifar10" / threat / f"{name}.pt"


def save_zoo_model(zoo, model_dir: Path, name: str, layout: str) -> torch.nn.Module:
    """A randomised zoo model, saved at its RobustBench path in the given checkpoint layout."""
    torch.manual_seed(0)
    model = randomised(zoo[name]["model"]())
    state = model.state_dict()
    saved = {
        "state_dict+module": lambda: {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "last+best": lambda: {"last": state, "best": {k: torch.zeros_like(v) for k, v in state.items()}},
        "no_mu_sigma": lambda: {k: v for k, v in state.items() if k not in ("mu", "sigma")},
    }[layout]()
    file = rb_file(model_dir, name)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, file)
    return model


@pytest.mark.parametrize("name,layout", [(RB_NAME, "state_dict+module"),
                                         ("Andriushchenko2020Understanding", "last+best"),
                                         ("Wong2020Fast", "no_mu_sigma")])
def test_robustbench_local_checkpoint_loads_offline(tmp_path, zoo, name, layout):
    model_dir = tmp_path / "models"
    model = save_zoo_model(zoo, model_dir, name, layout)
    source = load_source(f"robustbench:{name}", model_dir=model_dir)
    assert (source.kind, source.name, source.dataset) == ("robustbench", f"robustbench:{name}", "cifar10")
    assert (source.norm, source.num_classes) == ("linf", 10)
    assert source.eps == pytest.approx(8 / 255)
    assert source.checkpoint_hash == sha256(rb_file(model_dir, name))
    assert source.config["threat_model"] == "Linf"
    assert not source.model.training
    x = images()
    with torch.no_grad():
        logits = source.model(x)
        assert torch.isfinite(logits).all() and logits.std() > 0
        assert torch.equal(logits, model(x))


def test_robustbench_own_loader_reads_the_test_layout_the_same_way(tmp_path, zoo):
    from robustbench.utils import load_model as robustbench_load_model

    model_dir = tmp_path / "models"
    save_zoo_model(zoo, model_dir, RB_NAME, "state_dict+module")
    ours = load_source(f"robustbench:{RB_NAME}", model_dir=model_dir, eps=8 / 255, norm="Linf")
    theirs = robustbench_load_model(RB_NAME, model_dir=model_dir, dataset="cifar10", threat_model="Linf")
    x = images()
    with torch.no_grad():
        assert torch.equal(ours.model(x), theirs(x))


def test_robustbench_missing_file_offline_names_the_path(tmp_path):
    message = error_of(load_source, f"robustbench:{RB_NAME}", model_dir=tmp_path / "models")
    assert str(rb_file(tmp_path / "models")) in message
    assert "ROBEVAL_OFFLINE" in message


def test_robustbench_hub_model_offline_is_refused(tmp_path):
    message = error_of(load_source, "robustbench:Debenedetti2022Light_XCiT-S12", model_dir=tmp_path)
    assert "downloader" in message


def test_robustbench_wrong_checkpoint_is_one_line(tmp_path, zoo):
    model_dir = tmp_path / "models"
    torch.manual_seed(0)
    file = rb_file(model_dir)
    file.parent.mkdir(parents=True)
    torch.save({"state_dict": zoo["Andriushchenko2020Understanding"]["model"]().state_dict()}, file)
    assert f"does not fit robustbench:{RB_NAME}" in error_of(load_source, f"robustbench:{RB_NAME}",
                                                             model_dir=model_dir)
    file.write_bytes(b"not a torch file" * 64)
    assert "corrupt" in error_of(load_source, f"robustbench:{RB_NAME}", model_dir=model_dir)


def test_robustbench_unknown_name_suggests_close_ones(tmp_path):
    message = error_of(load_source, "robustbench:Sehwag2021Proxy_R19", model_dir=tmp_path)
    assert "unknown RobustBench model" in message and RB_NAME in message


@pytest.mark.parametrize("kwargs,expected", [
    ({"eps": 4 / 255}, "benchmarked at Linf eps=8/255; drop --eps or use --eps 8/255"),
    ({"norm": "l2"}, "registered for cifar10 under Linf, not L2: drop --norm or pass --norm linf"),
    ({"dataset": "cifar100"}, "is a cifar10 model, not cifar100: pass --dataset cifar10"),
    ({"dataset": "digits"}, "RobustBench has models for"),
    ({"arch": "resnet18"}, "drop --arch"),
])
def test_robustbench_inconsistent_arguments(tmp_path, kwargs, expected):
    name = "Andriushchenko2020Understanding"  # CIFAR-10 Linf only
    assert expected in error_of(load_source, f"robustbench:{name}", model_dir=tmp_path, **kwargs)


def test_robustbench_l2_threat_model_and_its_eps(tmp_path):
    name = RB_NAME  # registered under both Linf and L2 for CIFAR-10
    message = error_of(load_source, f"robustbench:{name}", model_dir=tmp_path, norm="l2", eps=0.5)
    assert str(rb_file(tmp_path, name, "L2")) in message
    assert "eps=0.5" in error_of(load_source, f"robustbench:{name}", model_dir=tmp_path, norm="l2",
                                 eps=8 / 255)
