"""robeval.data: the dataset registry, the CIFAR and digits readers, splits, batches, ImageNet.

Everything runs on the CPU without the network (conftest sets ROBEVAL_OFFLINE=1; downloads are
replaced by fakes). The real-data tests read the cifar10-mini subset and are marked ``cifar``;
all other CIFAR files are small pickles written into ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import shutil
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robeval.data import (
    DATASETS,
    DataConfig,
    ImageTensors,
    cifar,
    dataset_info,
    digits,
    load_data,
    load_test_set,
    split_train_val,
)
from robeval.data.batches import TensorSource
from robeval.data.imagenet import FolderSource
from robeval.errors import RobevalError, UnknownNameError

MINI_TRAIN, MINI_TEST = 5085, 1017
BATCHES = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def _raw(path: Path) -> dict:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="bytes")


def _write_batch(path: Path, rows: int, label_key: bytes = b"labels", classes: int = 10,
                 seed: int = 0, labels: int | None = None) -> dict:
    """A python-format CIFAR batch with random pixels; `labels` overrides the label count."""
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, (rows, 3 * 32 * 32), dtype=np.uint8),
        label_key: rng.integers(0, classes, rows if labels is None else labels).tolist(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle)
    return batch


def _write_cifar10(root: Path, rows: int = 6) -> Path:
    folder = root / BATCHES
    for seed, name in enumerate([*TRAIN_FILES, "test_batch"]):
        _write_batch(folder / name, rows, seed=seed)
    return folder


def _copy_mini(mini: Path, target: Path) -> Path:
    """A writable copy of the cifar10-mini batches folder."""
    folder = target / BATCHES
    folder.mkdir(parents=True)
    for name in [*TRAIN_FILES, "test_batch", "batches.meta"]:
        shutil.copyfile(mini / BATCHES / name, folder / name)
    return folder


def _error(call) -> str:
    """The message of the RobevalError raised by `call`, checked to be one line."""
    with pytest.raises(RobevalError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def _official_test_batch(monkeypatch, size: int, md5: str) -> None:
    """Pretend the official CIFAR-10 test_batch has this size and checksum."""
    test = dataclasses.replace(cifar.CIFAR10.test[0], size=size, md5=md5)
    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, test=(test,)))


# --- registry ---------------------------------------------------------------------------------


def test_registry_knows_the_four_datasets():
    assert set(DATASETS.names()) == {"cifar10", "cifar100", "digits", "imagenet"}
    assert dataset_info("cifar10").num_classes == 10
    assert dataset_info("imagenet").image_size == 224


@pytest.mark.parametrize("alias, name", [("CIFAR-10", "cifar10"), ("Cifar_100", "cifar100"),
                                         ("sklearn-digits", "digits"), (" ImageNet ", "imagenet")])
def test_registry_accepts_aliases_and_any_case(alias, name):
    assert DATASETS.resolve(alias) == name
    assert DATASETS.get(alias) is DATASETS.get(name)


def test_unknown_dataset_error_lists_known_names():
    message = _error(lambda: load_data(DataConfig(dataset="mnist")))
    assert "mnist" in message
    for name in ("cifar10", "cifar100", "digits", "imagenet"):
        assert name in message
    with pytest.raises(UnknownNameError):
        DATASETS.get("svhn")


# --- CIFAR-10 on cifar10-mini -----------------------------------------------------------------


def test_cifar10_mini_shapes_counts_and_labels(cifar10_mini_dir):
    splits = load_data(DataConfig(dataset="cifar10", data_dir=str(cifar10_mini_dir), val_size=0))
    assert splits.val is None
    for source, count in ((splits.train, MINI_TRAIN), (splits.test, MINI_TEST)):
        assert source.images.shape == (count, 3, 32, 32)
        assert source.images.dtype == torch.uint8
        assert source.labels.dtype == torch.int64
        assert source.labels.min() >= 0 and source.labels.max() <= 9
        assert len(source.labels.unique()) == 10
    assert splits.info.classes[0] == "airplane"


def test_cifar10_pixels_equal_the_raw_pickle_rows(cifar10_mini_dir):
    entry = DATASETS.get("cifar10")
    test, train = entry.read("test", cifar10_mini_dir), entry.read("train", cifar10_mini_dir)
    raw_test = _raw(cifar10_mini_dir / BATCHES / "test_batch")
    expected = torch.from_numpy(raw_test[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(test.images, expected)
    assert test.labels.tolist() == list(raw_test[b"labels"])
    raw_third = _raw(cifar10_mini_dir / BATCHES / "data_batch_3")  # rows 2*1017.. of train
    start = 2 * len(raw_third[b"labels"])
    part = train.images[start:start + len(raw_third[b"labels"])]
    assert torch.equal(part, torch.from_numpy(raw_third[b"data"].reshape(-1, 3, 32, 32)))


def test_cifar10_data_dir_may_be_the_batches_folder_itself(cifar10_mini_dir):
    parent = load_test_set("cifar10", cifar10_mini_dir)
    itself = load_test_set("cifar10", cifar10_mini_dir / BATCHES)
    assert torch.equal(parent.images, itself.images)
    assert torch.equal(parent.labels, itself.labels)


def test_load_test_set_returns_the_first_n_images(cifar10_mini_dir):
    full = load_test_set("cifar10", cifar10_mini_dir)
    first = load_test_set("cifar10", str(cifar10_mini_dir), n=100)
    assert len(full) == MINI_TEST and len(first) == 100
    assert torch.equal(first.images, full.images[:100])


# --- checksums --------------------------------------------------------------------------------


def test_official_size_file_with_wrong_md5_is_refused(tmp_path, monkeypatch):
    _write_batch(tmp_path / BATCHES / "test_batch", 4)
    size = (tmp_path / BATCHES / "test_batch").stat().st_size
    _official_test_batch(monkeypatch, size=size, md5="0" * 32)
    message = _error(lambda: load_test_set("cifar10", tmp_path))
    assert "MD5" in message and "test_batch" in message


def test_official_size_file_with_right_md5_is_read(tmp_path, monkeypatch):
    batch = _write_batch(tmp_path / BATCHES / "test_batch", 4)
    path = tmp_path / BATCHES / "test_batch"
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    _official_test_batch(monkeypatch, size=path.stat().st_size, md5=md5)
    test = load_test_set("cifar10", tmp_path)
    assert test.labels.tolist() == batch[b"labels"]


def test_subset_file_of_another_size_is_read_without_md5(tmp_path, monkeypatch):
    _write_batch(tmp_path / BATCHES / "test_batch", 4)
    size = (tmp_path / BATCHES / "test_batch").stat().st_size
    _official_test_batch(monkeypatch, size=size + 1, md5="0" * 32)
    assert len(load_test_set("cifar10", tmp_path)) == 4


def test_mini_files_are_not_of_the_official_size(cifar10_mini_dir):
    for official in (*cifar.CIFAR10.train, *cifar.CIFAR10.test):
        assert (cifar10_mini_dir / BATCHES / official.name).stat().st_size != official.size


# --- CIFAR-100 --------------------------------------------------------------------------------


def test_cifar100_generated_pair_loads_with_100_classes(tmp_path):
    train = _write_batch(tmp_path / "cifar-100-python" / "train", 30, b"fine_labels", 100)
    test = _write_batch(tmp_path / "cifar-100-python" / "test", 12, b"fine_labels", 100, seed=1)
    splits = load_data(DataConfig(dataset="cifar-100", data_dir=str(tmp_path), val_size=5))
    assert splits.info.num_classes == 100 and splits.info.channels == 3
    assert len(splits.train) == 25 and len(splits.val) == 5 and len(splits.test) == 12
    assert splits.test.labels.tolist() == test[b"fine_labels"]
    expected = torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32))
    assert torch.equal(splits.test.images, expected)
    assert Counter(splits.train.labels.tolist() + splits.val.labels.tolist()) == Counter(
        train[b"fine_labels"])


def test_cifar100_file_with_the_official_row_count_is_md5_checked(tmp_path, monkeypatch):
    _write_batch(tmp_path / "cifar-100-python" / "test", 4, b"fine_labels", 100)
    test = dataclasses.replace(cifar.CIFAR100.test[0], rows=4)
    monkeypatch.setattr(cifar, "CIFAR100", dataclasses.replace(cifar.CIFAR100, test=(test,)))
    assert "MD5" in _error(lambda: load_test_set("cifar100", tmp_path))


# --- missing data and downloads ---------------------------------------------------------------


@pytest.mark.parametrize("dataset, folder",
                         [("cifar10", BATCHES), ("cifar100", "cifar-100-python")])
def test_offline_missing_folder_says_where_to_put_the_files(tmp_path, monkeypatch, dataset, folder):
    def no_download(*args):
        raise AssertionError("offline mode must not download")

    monkeypatch.setattr(cifar, "download", no_download)
    message = _error(lambda: load_data(DataConfig(dataset=dataset, data_dir=str(tmp_path))))
    assert folder in message and "--data-dir" in message and str(tmp_path) in message


@pytest.mark.parametrize("failure", [urllib.error.URLError("no route"), OSError("disk full"),
                                     ConnectionResetError()])
def test_failed_download_is_a_one_line_error(tmp_path, monkeypatch, failure):
    def failing_download(layout, data_dir):
        raise failure

    monkeypatch.delenv("ROBEVAL_OFFLINE")
    monkeypatch.setattr(cifar, "download", failing_download)
    message = _error(lambda: load_test_set("cifar10", tmp_path / "data"))
    assert "download failed" in message and type(failure).__name__ in message
    assert BATCHES in message and "--data-dir" in message


def test_successful_download_is_then_read(tmp_path, monkeypatch):
    calls = []

    def fake_download(layout, data_dir):
        calls.append((layout.folder, data_dir))
        _write_cifar10(data_dir, rows=6)

    monkeypatch.delenv("ROBEVAL_OFFLINE")
    monkeypatch.setattr(cifar, "download", fake_download)
    target = tmp_path / "fresh"
    splits = load_data(DataConfig(dataset="cifar10", data_dir=str(target), val_size=4))
    assert calls == [(BATCHES, target)]  # fetched for the train split, found for the test split
    assert len(splits.train) + len(splits.val) == 30 and len(splits.test) == 6
    expected = _raw(target / BATCHES / "test_batch")[b"data"].reshape(-1, 3, 32, 32)
    assert torch.equal(splits.test.images, torch.from_numpy(expected))


def test_download_that_leaves_no_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBEVAL_OFFLINE")
    monkeypatch.setattr(cifar, "download", lambda layout, data_dir: None)
    assert "--data-dir" in _error(lambda: load_test_set("cifar10", tmp_path))


def test_missing_training_file_is_named(cifar10_mini_dir, tmp_path):
    folder = _copy_mini(cifar10_mini_dir, tmp_path)
    (folder / "data_batch_3").unlink()
    message = _error(lambda: load_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path))))
    assert "missing data file" in message and "data_batch_3" in message


# --- truncated and corrupt files --------------------------------------------------------------


def test_truncated_test_batch_is_reported(cifar10_mini_dir, tmp_path):
    path = _copy_mini(cifar10_mini_dir, tmp_path) / "test_batch"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = _error(lambda: load_test_set("cifar10", tmp_path))
    assert "truncated or corrupt" in message and "test_batch" in message


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", pickle.dumps([1, 2, 3]),
                                     pickle.dumps({b"data": np.zeros((2, 3072)), b"x": [0, 1]})])
def test_corrupt_test_batch_is_reported(tmp_path, content):
    (tmp_path / "test_batch").write_bytes(content)
    assert "truncated or corrupt" in _error(lambda: load_test_set("cifar10", tmp_path))


def test_labels_and_data_of_different_lengths_are_refused(tmp_path):
    _write_batch(tmp_path / "test_batch", 5, labels=4)
    assert "test_batch" in _error(lambda: load_test_set("cifar10", tmp_path))


def test_rows_of_the_wrong_width_are_refused(tmp_path):
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((3, 1024), dtype=np.uint8), b"labels": [0, 1, 2]}, handle)
    assert "unexpected shape" in _error(lambda: load_test_set("cifar10", tmp_path))


# --- digits -----------------------------------------------------------------------------------


def test_digits_load_without_a_data_dir():
    splits = load_data(DataConfig(dataset="digits", val_size=0))
    assert splits.train.images.shape == (1497, 1, 32, 32)
    assert splits.test.images.shape == (300, 1, 32, 32)
    assert splits.train.images.dtype == torch.uint8
    assert splits.info.num_classes == 10 and splits.info.channels == 1
    assert set(splits.train.labels.tolist()) == set(range(10))
    assert set(splits.test.labels.tolist()) == set(range(10))


def test_digits_are_the_same_on_every_read():
    first_train, first_test = digits.read_digits("train"), digits.read_digits("test")
    digits._all_digits.cache_clear()
    again_train, again_test = digits.read_digits("train"), digits.read_digits("test")
    assert torch.equal(first_train.images, again_train.images)
    assert torch.equal(first_train.labels, again_train.labels)
    assert torch.equal(first_test.images, again_test.images)


def test_digits_info_has_no_flip_and_matches_the_train_statistics():
    info = dataset_info("digits")
    assert info.flip is False
    train = digits.read_digits("train").images.float() / 255
    assert train.mean().item() == pytest.approx(info.mean[0], abs=0.01)
    assert train.std().item() == pytest.approx(info.std[0], abs=0.01)


# --- load_data: validation split and subsets --------------------------------------------------


def _rows(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    return Counter((bytes(image.numpy().tobytes()), int(label))
                   for image, label in zip(images, labels, strict=True))


def test_split_train_val_is_a_seeded_partition():
    data = ImageTensors(torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.arange(50))
    train, val = split_train_val(data, 10, seed=3)
    assert len(train) == 40 and len(val) == 10
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(50))
    assert train.labels.tolist() == sorted(train.labels.tolist())  # training order is kept
    assert torch.equal(split_train_val(data, 10, seed=3)[1].labels, val.labels)
    assert not torch.equal(split_train_val(data, 10, seed=4)[1].labels, val.labels)
    assert split_train_val(data, 0, seed=3) == (data, None)


def test_validation_split_of_load_data_is_disjoint_and_seeded():
    full = digits.read_digits("train")
    splits = load_data(DataConfig(dataset="digits", val_size=200, split_seed=1))
    assert len(splits.train) == 1297 and len(splits.val) == 200 and len(splits.test) == 300
    train_rows = _rows(splits.train.images, splits.train.labels)
    val_rows = _rows(splits.val.images, splits.val.labels)
    assert train_rows + val_rows == _rows(full.images, full.labels)
    assert not set(train_rows) & set(val_rows)  # the digits training images are all distinct
    same = load_data(DataConfig(dataset="digits", val_size=200, split_seed=1))
    other = load_data(DataConfig(dataset="digits", val_size=200, split_seed=2))
    assert torch.equal(same.val.images, splits.val.images)
    assert not torch.equal(other.val.images, splits.val.images)


def test_train_and_test_subsets_take_the_first_images():
    full = load_data(DataConfig(dataset="digits", val_size=100))
    part = load_data(DataConfig(dataset="digits", val_size=100, train_subset=64, test_subset=32))
    assert torch.equal(part.train.images, full.train.images[:64])
    assert torch.equal(part.test.labels, full.test.labels[:32])
    assert torch.equal(part.val.images, full.val.images)  # subsets are taken after the split
    bigger = load_data(DataConfig(dataset="digits", val_size=0, test_subset=10_000))
    assert len(bigger.test) == 300


@pytest.mark.parametrize("val_size", [1497, 5000])
def test_validation_size_at_least_the_training_set_is_an_error(val_size):
    message = _error(lambda: load_data(DataConfig(dataset="digits", val_size=val_size)))
    assert "--val-size" in message


def test_validation_and_test_sources_are_never_augmented():
    splits = load_data(DataConfig(dataset="digits", val_size=50))
    assert splits.train.augment and not splits.train.flip
    assert not splits.val.augment and not splits.test.augment
    plain = load_data(DataConfig(dataset="digits", val_size=50, augment=False))
    assert not plain.train.augment


# --- TensorSource.batches ---------------------------------------------------------------------


def _source(n: int = 10, augment: bool = False, flip: bool = True, padding: int = 4,
            size: int = 8) -> TensorSource:
    """Images whose pixels all differ (1..255, none zero) and labels 0..n-1."""
    pixels = torch.arange(n * 3 * size * size) % 255 + 1
    images = pixels.reshape(n, 3, size, size).to(torch.uint8)
    return TensorSource(images, torch.arange(n), "cpu", augment=augment, flip=flip,
                        padding=padding)


def test_batches_are_floats_in_the_unit_range_on_the_device():
    source = _source(augment=True)
    for images, labels in source.batches(4, seed=0, shuffle=True):
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.device == source.device == torch.device("cpu")
        assert images.min() >= 0 and images.max() <= 1


def test_unaugmented_batches_equal_the_stored_images_over_255():
    source = _source()
    images, labels = zip(*source.batches(4), strict=True)
    assert torch.equal(torch.cat(images), source.images.float() / 255)
    assert torch.equal(torch.cat(labels), torch.arange(10))
    assert source.images.dtype == torch.uint8  # the stored images are not modified


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_batch_sizes_and_drop_last(drop_last, sizes):
    batches = list(_source(10).batches(4, shuffle=True, drop_last=drop_last))
    assert [len(labels) for _, labels in batches] == sizes
    assert [len(images) for images, _ in batches] == sizes


def test_shuffle_covers_every_index_exactly_once_per_epoch():
    source = _source(37)
    for seed in range(3):
        labels = torch.cat([labels for _, labels in source.batches(5, seed=seed, shuffle=True)])
        assert sorted(labels.tolist()) == list(range(37))
        assert labels.tolist() != list(range(37))


def test_same_seed_gives_identical_batches_and_another_seed_another_order():
    source = _source(20, augment=True)
    first = list(source.batches(6, seed=7, shuffle=True))
    again = list(source.batches(6, seed=7, shuffle=True))
    other = list(source.batches(6, seed=8, shuffle=True))
    for (a_images, a_labels), (b_images, b_labels) in zip(first, again, strict=True):
        assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    assert torch.cat([labels for _, labels in first]).tolist() != torch.cat(
        [labels for _, labels in other]).tolist()


def _crop_offset(crop: torch.Tensor, image: torch.Tensor, padding: int) -> tuple[int, int] | None:
    """The (dy, dx) at which `crop` equals a window of the zero-padded `image`, if any."""
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    height, width = image.shape[1:]
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            if torch.equal(crop, padded[:, dy:dy + height, dx:dx + width]):
                return dy, dx
    return None


def test_random_crop_is_a_window_of_the_padded_image():
    source = _source(64, augment=True, flip=False)
    offsets = []
    for images, labels in source.batches(16, seed=1, shuffle=True):
        for crop, label in zip(images, labels, strict=True):
            offset = _crop_offset(crop, source.images[label].float() / 255, 4)
            assert offset is not None
            offsets.append(offset)
    assert len(set(offsets)) > 20  # one random offset per image, spread over the 81 choices
    assert {dy for dy, _ in offsets} == set(range(9))


def test_flip_flips_about_half_of_the_images():
    source = _source(400, augment=True, padding=0)
    flipped = 0
    for images, labels in source.batches(100, seed=2):
        stored = source.images[labels].float() / 255
        same = (images == stored).flatten(1).all(1)
        mirrored = (images == stored.flip(3)).flatten(1).all(1)
        assert bool((same ^ mirrored).all())  # each image is either kept or mirrored
        flipped += int(mirrored.sum())
    assert 140 <= flipped <= 260


def test_no_flips_when_flips_would_change_the_label():
    source = _source(64, augment=True, flip=False, padding=0)
    for images, labels in source.batches(32, seed=3, shuffle=True):
        assert torch.equal(images, source.images[labels].float() / 255)


def test_digits_training_batches_are_cropped_but_never_flipped():
    train = load_data(DataConfig(dataset="digits", val_size=0, train_subset=48)).train
    assert train.augment and not train.flip
    # asymmetric patterns make flips and shifts recognisable; labels become image indices
    train.images, train.labels = _source(48, size=32).images[:, :1], torch.arange(48)
    for images, labels in train.batches(16, seed=4, shuffle=True):
        for crop, label in zip(images, labels, strict=True):
            assert _crop_offset(crop, train.images[label].float() / 255, 4) is not None


# --- ImageNet folders -------------------------------------------------------------------------


CLASSES = ("cat", "dog")  # class i has channel i saturated in every image


def _write_image(path: Path, label: int, rng: np.random.Generator) -> np.ndarray:
    pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)  # 40 rows, 50 columns
    pixels[:, :, label] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def image_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(CLASSES):
            for i in range(3):
                _write_image(tmp_path / split / name / f"{i}.png", label, rng)
    return tmp_path


def _no_workers(source: FolderSource) -> FolderSource:
    source.workers = 0
    return source


def test_imagenet_folder_yields_224_pixel_batches_with_the_right_labels(image_folder):
    splits = load_data(DataConfig(dataset="imagenet", data_dir=str(image_folder)))
    assert splits.val is None and len(splits.train) == 6 and len(splits.test) == 6
    assert splits.train.dataset.classes == list(CLASSES)
    for source in (splits.train, splits.test):
        batches = list(_no_workers(source).batches(4, seed=0, shuffle=source is splits.train))
        assert [len(labels) for _, labels in batches] == [4, 2]
        images = torch.cat([images for images, _ in batches])
        labels = torch.cat([labels for _, labels in batches])
        assert images.shape == (6, 3, 224, 224) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
        assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
        for image, label in zip(images, labels, strict=True):
            assert torch.all(image[label] == 1.0)  # the saturated channel names the class


def test_imagenet_val_transform_is_resize_256_and_centre_crop_224(image_folder):
    source = _no_workers(FolderSource(image_folder / "val", train=False))
    images, labels = next(source.batches(6))
    again, _ = next(source.batches(6, seed=5))
    assert torch.equal(images, again)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    for image, path in zip(images, sorted((image_folder / "val").glob("*/*.png")), strict=True):
        resized = Image.open(path).convert("RGB").resize((320, 256), Image.BILINEAR)
        expected = np.asarray(resized.crop((48, 16, 272, 240)), dtype=np.float32) / 255
        assert torch.allclose(image, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)


def test_imagenet_missing_folder_is_a_one_line_error(tmp_path):
    message = _error(lambda: load_data(DataConfig(dataset="imagenet")))
    assert "--data-dir" in message and "train" in message
    _write_image(tmp_path / "train" / "cat" / "0.png", 0, np.random.default_rng(0))
    message = _error(lambda: load_data(DataConfig(dataset="imagenet", data_dir=str(tmp_path))))
    assert "val" in message and "--data-dir" in message


@pytest.mark.parametrize("content", ["no class folders", "class folders without images"])
def test_imagenet_folder_without_images_is_a_one_line_error(tmp_path, content):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        if content == "class folders without images":
            (tmp_path / split / "cat").mkdir()
            (tmp_path / split / "cat" / "notes.txt").write_text("not an image")
    message = _error(lambda: load_data(DataConfig(dataset="imagenet", data_dir=str(tmp_path))))
    assert str(tmp_path / "train") in message and "no images" in message


def test_imagenet_training_augmentation_is_fixed_by_the_seed(image_folder):
    source = FolderSource(image_folder / "train", train=True, workers=1)
    first = [images for images, _ in source.batches(3, seed=1, shuffle=True)]
    again = [images for images, _ in source.batches(3, seed=1, shuffle=True)]
    other = [images for images, _ in source.batches(3, seed=2, shuffle=True)]
    assert torch.equal(torch.cat(first), torch.cat(again))
    assert not torch.equal(torch.cat(first), torch.cat(other))


def test_imagenet_has_no_in_memory_test_set(image_folder):
    assert "streams" in _error(lambda: load_test_set("imagenet", image_folder))


def test_imagenet_shards_are_the_parts_of_each_global_batch(image_folder):
    source = _no_workers(FolderSource(image_folder / "val", train=False))
    whole = list(source.batches(4, seed=2, shuffle=True))
    parts = [list(source.batches(4, seed=2, shuffle=True, shard=(rank, 2))) for rank in range(2)]
    assert [len(y) for _, y in parts[0]] == [2, 1] and [len(y) for _, y in parts[1]] == [2, 1]
    for index, (images, labels) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][index][0], parts[1][index][0]]), images)
        assert torch.equal(torch.cat([parts[0][index][1], parts[1][index][1]]), labels)
