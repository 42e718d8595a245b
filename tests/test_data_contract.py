"""The data contract: altered data is refused with one line naming the file and row, never cast.

CIFAR batches are built in ``tmp_path`` in the official python-pickle format (a dict with
b"data", b"labels", b"batch_label", b"filenames", plus batches.meta), then one file is altered
and read through the reader and through `robeval attack` / `robeval train`. The Python API's
tensors go through `attack_tensors` and `check_image_tensors`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robeval
from robeval.cli import main
from robeval.data import DATASETS, DataConfig, load_data
from robeval.data.contract import check_cifar_arrays, check_image_tensors
from robeval.errors import RobevalError
from robeval.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCHES = "cifar-10-batches-py"
FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
ROWS, BAD = 20, 17   # rows per generated batch; the row each alteration hits
NOT_OFFICIAL = "the file is not an official-format CIFAR batch"


def valid_arrays(seed: int = 0, rows: int = ROWS, classes: int = 10) -> tuple[np.ndarray, list[int]]:
    """Random uint8 pixels (rows, 3072) and integer labels, as in an official batch."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (rows, 3 * 32 * 32), dtype=np.uint8)
    return data, rng.integers(0, classes, rows).tolist()


def write_batch(path: Path, data: object, labels: object, label_key: bytes = b"labels") -> None:
    """One batch file in the official layout."""
    batch = {b"batch_label": f"{path.name} of a test".encode(), label_key: labels, b"data": data,
             b"filenames": [f"image_{i}.png".encode() for i in range(len(data))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(root: Path, altered: str | None = None, alter=None) -> Path:
    """A valid CIFAR-10 folder under `root`, with `alter` applied to the file `altered`."""
    folder = root / BATCHES
    for seed, name in enumerate(FILES):
        data, labels = valid_arrays(seed)
        if name == altered:
            data, labels = alter(data, labels)
        write_batch(folder / name, data, labels)
    meta = {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": ROWS, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def with_pixel(dtype, value):
    """Data cast to `dtype` with `value` at one pixel of row BAD."""
    def alter(data, labels):
        data = data.astype(dtype)
        data[BAD, 100] = value
        return data, labels
    return alter


def with_label(value):
    """Labels with `value` at position BAD."""
    def alter(data, labels):
        labels = list(labels)
        labels[BAD] = value
        return data, labels
    return alter


CORRUPTIONS = [
    ("float-data-in-0-1", lambda d, y: (d.astype(np.float32) / 255, y),
     "data has dtype float32, must be uint8 (N, 3072); row 0 holds"),
    ("nan-data", with_pixel(np.float64, np.nan),
     f"data has dtype float64, must be uint8 (N, 3072); row {BAD} holds nan, not a whole number"),
    ("pixel-455", with_pixel(np.int16, 455),
     f"data has dtype int16, must be uint8 (N, 3072); row {BAD} holds 455, not a whole number in 0..255"),
    ("pixel-minus-1", with_pixel(np.int16, -1),
     f"data has dtype int16, must be uint8 (N, 3072); row {BAD} holds -1, not a whole number in 0..255"),
    ("wrong-shape", lambda d, y: (np.ascontiguousarray(d[:, :3000]), y),
     f"data has unexpected shape ({ROWS}, 3000), must be uint8 (N, 3072)"),
    ("float-label", with_label(3.7), f"labels[{BAD}] is 3.7, not an integer class in 0..9"),
    ("bool-label", with_label(True), f"labels[{BAD}] is True, not an integer class in 0..9"),
    ("bool-label-array", lambda d, y: (d, np.array(y) > 4), "labels[0] is "),
    ("float-label-array", lambda d, y: (d, np.array(y, dtype=np.float64)), "labels[0] is "),
    ("label-10", with_label(10), f"labels[{BAD}] is 10, not an integer class in 0..9"),
    ("label-minus-1", with_label(-1), f"labels[{BAD}] is -1, not an integer class in 0..9"),
    ("one-label-missing", lambda d, y: (d, y[:-1]),
     f"{ROWS - 1} labels for {ROWS} rows of data, must be one label per row"),
]
IDS = [case[0] for case in CORRUPTIONS]


def one_line_error(call) -> str:
    """The message of the RobevalError raised by `call`, checked to be one line."""
    with pytest.raises(RobevalError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the reader -------------------------------------------------------------------------------

@pytest.mark.parametrize("split, name", [("train", "data_batch_3"), ("test", "test_batch")])
@pytest.mark.parametrize("alter, expected", [case[1:] for case in CORRUPTIONS], ids=IDS)
def test_the_reader_refuses_altered_data_naming_file_and_row(tmp_path, split, name, alter, expected):
    folder = write_cifar10(tmp_path, name, alter)
    message = one_line_error(lambda: DATASETS.get("cifar10").read(split, tmp_path))
    assert message.startswith(f"data file {folder / name}: {expected}"), message
    assert NOT_OFFICIAL in message


def test_a_valid_generated_folder_loads_unchanged(tmp_path):
    write_cifar10(tmp_path)
    splits = load_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=0, augment=False))
    data, labels = valid_arrays(seed=len(FILES) - 1)
    assert torch.equal(splits.test.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert splits.test.labels.tolist() == labels
    assert len(splits.train) == 5 * ROWS and splits.train.labels.dtype == torch.int64


@pytest.mark.parametrize("labels", [
    np.arange(ROWS) % 10, np.arange(ROWS, dtype=np.uint8) % 10, [np.int32(i % 10) for i in range(ROWS)],
], ids=["int64-array", "uint8-array", "numpy-ints"])
def test_integer_labels_of_any_integer_type_load(tmp_path, labels):
    data, _ = valid_arrays()
    write_batch(tmp_path / "test_batch", data, labels)
    test = DATASETS.get("cifar10").read("test", tmp_path)
    assert test.labels.tolist() == [i % 10 for i in range(ROWS)]


def test_cifar100_labels_are_checked_against_100_classes(tmp_path):
    data, labels = valid_arrays(classes=100)
    write_batch(tmp_path / "cifar-100-python" / "train", data, labels, b"fine_labels")
    labels[BAD] = 100
    write_batch(tmp_path / "cifar-100-python" / "test", data, labels, b"fine_labels")
    assert len(DATASETS.get("cifar100").read("train", tmp_path)) == ROWS
    message = one_line_error(lambda: DATASETS.get("cifar100").read("test", tmp_path))
    assert f"test: labels[{BAD}] is 100, not an integer class in 0..99: {NOT_OFFICIAL}" in message


@pytest.mark.parametrize("data, labels, expected", [
    ([[0] * 3072], [0], "data has type list, must be uint8 (N, 3072)"),
    (np.zeros((1, 3072), np.uint8), "0", "labels have type str, must be a list of integer classes"),
    (np.zeros((1, 3072), np.uint8), np.zeros((1, 1), np.int64), "labels have shape (1, 1)"),
    (np.zeros((1, 3072), np.uint8), ["cat\n"], r"labels[0] is 'cat\n', not an integer class"),
    (np.zeros((1, 3072), np.uint8), [float("nan")], "labels[0] is nan, not an integer class"),
    (np.zeros((0, 3072), np.float32), [], "data has dtype float32, must be uint8 (N, 3072):"),
], ids=["data-list", "labels-str", "labels-2d", "label-text", "label-nan", "empty-float"])
def test_check_cifar_arrays_names_what_is_wrong(data, labels, expected):
    message = one_line_error(lambda: check_cifar_arrays(data, labels, 10, "/data/test_batch"))
    assert message.startswith(f"data file /data/test_batch: {expected}"), message


# --- the command line -------------------------------------------------------------------------

ATTACK = ["--arch", "cnn-small", "--eps", "8/255", "--suite", "fgsm", "--n", "8", "--batch-size", "8",
          "--no-checks", "--quiet"]
TRAIN = ["--preset", "ci-small", "--epochs", "1", "--val-size", "8", "--diagnostics-batch", "0",
         "--val-pgd-steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("contract") / "cnn-small.pt"
    torch.save(build_model("cnn-small").net.state_dict(), path)
    return path


def robeval_cli(capsys, command: str, root: Path, weights: Path, tmp_path: Path) -> tuple[int, str]:
    """Exit code and stderr of `robeval attack|train` on the CIFAR-10 folder under `root`."""
    data = ["--dataset", "cifar10", "--data-dir", str(root)]
    if command == "attack":
        args = ["attack", str(weights), *ATTACK, "--db", str(tmp_path / "store.sqlite"), *data]
    else:
        args = ["train", *TRAIN, *data, "--out", str(tmp_path / "run")]
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command, name", [("attack", "test_batch"), ("train", "data_batch_2")])
@pytest.mark.parametrize("alter, expected", [case[1:] for case in CORRUPTIONS], ids=IDS)
def test_the_cli_refuses_altered_data_in_one_line(tmp_path, capsys, weights, command, name, alter,
                                                  expected):
    folder = write_cifar10(tmp_path / "cifar", name, alter)
    code, stderr = robeval_cli(capsys, command, tmp_path / "cifar", weights, tmp_path)
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert stderr.startswith(f"error: data file {folder / name}: {expected}"), stderr
    assert NOT_OFFICIAL in stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_the_cli_attacks_a_valid_generated_folder(tmp_path, capsys, weights):
    write_cifar10(tmp_path / "cifar")
    code, stderr = robeval_cli(capsys, "attack", tmp_path / "cifar", weights, tmp_path)
    assert code == 0, stderr


# --- tensors from the Python API ------------------------------------------------------------

N = 4


def images(value: float | None = None, index: int = 2) -> torch.Tensor:
    """N images 1×8×8 in [0,1], with `value` at one pixel of image `index`."""
    batch = torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    if value is not None:
        batch[index, 0, 3, 5] = value
    return batch


LABELS = torch.tensor([0, 1, 2, 3])

TENSOR_CASES = [
    ("nan", images(float("nan")), LABELS, "images[2] holds nan: images must be finite and lie in [0,1]"),
    ("inf", images(float("inf"), 1), LABELS, "images[1] holds inf: images must be finite"),
    ("above-1", images(1.5), LABELS, "images[2] holds 1.5: images must lie in [0,1]; undo any normalisation"),
    ("below-0", images(-0.25, 3), LABELS, "images[3] holds -0.25: images must lie in [0,1]"),
    ("uint8-images", (images() * 255).to(torch.uint8), LABELS,
     "images have dtype torch.uint8: images must be a float tensor of shape (N, C, H, W)"),
    ("int64-images", images().long(), LABELS, "images have dtype torch.int64"),
    ("3d-images", images()[:, 0], LABELS, "images have shape (4, 8, 8): images must be a float tensor"),
    ("numpy-images", images().numpy(), LABELS, "images have type ndarray"),
    ("empty", images()[:0], LABELS[:0], "images is empty: pass at least one image"),
    ("float-labels", images(), torch.tensor([0, 1, 2.7, 3]),
     "labels have dtype torch.float32 (labels[2] is 2.7): labels must be an integer tensor of shape (4,)"),
    ("whole-float-labels", images(), LABELS.double(), "labels have dtype torch.float64: labels must be"),
    ("bool-labels", images(), LABELS > 1, "labels have dtype torch.bool: labels must be an integer tensor"),
    ("list-labels", images(), [0, 1, 2, 3], "labels have type list: labels must be an integer tensor"),
    ("labels-short", images(), LABELS[:3],
     "labels have shape (3,): labels must be an integer tensor of shape (4,)"),
    ("label-minus-1", images(), torch.tensor([0, 1, 2, -1]), "labels[3] is -1: labels must be class indices"),
    ("label-10", images(), torch.tensor([0, 10, 2, 3]), "labels must lie in 0..9"),
]


@pytest.mark.parametrize("images_, labels, expected", [c[1:] for c in TENSOR_CASES],
                         ids=[c[0] for c in TENSOR_CASES])
def test_attack_tensors_refuses_bad_tensors(images_, labels, expected):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(RobevalError, match=re.escape(expected)) as info:
        robeval.attack_tensors(model, images_, labels, eps=8 / 255, suite="fgsm")
    assert "\n" not in str(info.value)


def test_check_image_tensors_names_the_first_label_out_of_range():
    message = one_line_error(lambda: check_image_tensors(images(), torch.tensor([0, 1, 10, 12]), 10))
    assert message == "labels[2] is 10: labels must lie in 0..9"
    assert check_image_tensors(images(), LABELS, 10) is None
    assert check_image_tensors(images(0.0), LABELS.int()) is None     # bounds included
    assert check_image_tensors(images(1.0).double(), LABELS.to(torch.uint8)) is None
