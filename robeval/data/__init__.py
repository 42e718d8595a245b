"""Dataset registry: official-format CIFAR readers, the embedded digits set, ImageNet folders.

`load_data(DataConfig(...), device)` returns train/validation/test `BatchSource`s that yield
batches of images in [0,1] on the device. Small datasets stay on the device as uint8 tensors
and are augmented there in whole batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from robeval.data.batches import BatchSource, TensorSource
from robeval.errors import RobevalError
from robeval.registry import Registry
from robeval.schema import MAX_IMAGES, MAX_TRAIN_SEED, whole


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and an attack need to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    image_size: int                  # side of the (square) model input, in pixels
    mean: tuple[float, ...]          # per-channel, for the normalisation inside the model
    std: tuple[float, ...]
    flip: bool = True                # whether horizontal flips preserve the label
    classes: tuple[str, ...] = ()


@dataclass
class ImageTensors:
    """A whole split in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageTensors:
        """The rows at `index`."""
        return ImageTensors(self.images[index], self.labels[index])


@dataclass(frozen=True)
class DataConfig:
    """Which data to train and validate on."""

    dataset: str = "digits"              # a name from DATASETS
    data_dir: str | None = None          # folder holding the official files (not for digits)
    train_subset: whole(1, MAX_IMAGES) | None = None  # only the first N training images (after the split)
    test_subset: whole(1, MAX_IMAGES) | None = None   # only the first N test images
    val_size: whole(0, MAX_IMAGES) = 500       # images carved from the training set for validation
    split_seed: whole(0, MAX_TRAIN_SEED) = 0   # seed of the train/validation split
    augment: bool = True                 # random crop (4 px padding) + flip where it keeps labels


@dataclass
class DataSplits:
    """The three splits of a dataset, ready to iterate on a device."""

    info: DatasetInfo
    train: BatchSource
    val: BatchSource | None
    test: BatchSource


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its info and how to read a split (in memory, or as a source)."""

    info: DatasetInfo
    read: Callable[[str, Path | None], ImageTensors | BatchSource]  # read(split, data_dir)


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def dataset_info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of a registered dataset."""
    return DATASETS.get(name).info


def split_train_val(data: ImageTensors, val_size: int, seed: int) -> tuple[ImageTensors, ImageTensors | None]:
    """Carve `val_size` images from `data` by a seeded permutation; the rest stay in order."""
    if val_size <= 0:
        return data, None
    if val_size >= len(data):
        raise RobevalError(
            f"--val-size {val_size} leaves no training images (the set has {len(data)}); "
            "lower --val-size"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator)
    val_index, train_index = order[:val_size].sort().values, order[val_size:].sort().values
    return data.subset(train_index), data.subset(val_index)


def _first(data: ImageTensors, n: int | None) -> ImageTensors:
    return data if n is None else data.subset(torch.arange(min(n, len(data))))


def load_data(config: DataConfig, device: torch.device | str = "cpu") -> DataSplits:
    """Read the dataset of `config` and hold it on `device` (folders stream from disk)."""
    entry = DATASETS.get(config.dataset)
    data_dir = Path(config.data_dir).expanduser() if config.data_dir else None
    train, test = entry.read("train", data_dir), entry.read("test", data_dir)
    if not isinstance(train, ImageTensors):  # streamed folders: no carving, no subsets in memory
        return DataSplits(entry.info, train.to(device), None, test.to(device))
    train, val = split_train_val(train, config.val_size, config.split_seed)
    train, test = _first(train, config.train_subset), _first(test, config.test_subset)
    flip = entry.info.flip
    return DataSplits(
        entry.info,
        TensorSource(train.images, train.labels, device, augment=config.augment, flip=flip),
        None if val is None else TensorSource(val.images, val.labels, device, augment=False),
        TensorSource(test.images, test.labels, device, augment=False),
    )


def load_test_set(name: str, data_dir: str | Path | None, n: int | None = None) -> ImageTensors:
    """The first `n` test images of a dataset (the RobustBench convention) as uint8 tensors."""
    entry = DATASETS.get(name)
    test = entry.read("test", Path(data_dir) if data_dir else None)
    if not isinstance(test, ImageTensors):
        raise RobevalError(f"dataset {name!r} streams from disk; it has no in-memory test set")
    return _first(test, n)


# Register the datasets (imports register themselves).
from robeval.data import cifar as _cifar  # noqa: E402,F401
from robeval.data import digits as _digits  # noqa: E402,F401
from robeval.data import imagenet as _imagenet  # noqa: E402,F401
