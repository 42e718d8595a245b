"""CIFAR-10 and CIFAR-100 from the official python-format batches, read by our own reader.

Subsets in the same format (such as cifar10-mini) are accepted: the official MD5 checksums are
verified only when a file has the official size, so a full copy that got corrupted is caught
while a deliberate subset is not refused.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robeval.data import DATASETS, DatasetEntry, DatasetInfo, ImageTensors
from robeval.data.contract import check_cifar_arrays
from robeval.errors import RobevalError


@dataclass(frozen=True)
class OfficialFile:
    """One file of the official release: name, MD5, and size in bytes (None: check rows)."""

    name: str
    md5: str
    size: int | None
    rows: int


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its files and how it labels them."""

    folder: str
    url: str
    archive_md5: str
    train: tuple[OfficialFile, ...]
    test: tuple[OfficialFile, ...]
    label_key: bytes
    classes: int


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    train=(
        OfficialFile("data_batch_1", "c99cafc152244af753f735de768cd75f", 31035704, 10000),
        OfficialFile("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec", 31035320, 10000),
        OfficialFile("data_batch_3", "54ebc095f3ab1f0389bbae665268c751", 31035999, 10000),
        OfficialFile("data_batch_4", "634d18415352ddfa80567beed471001a", 31035696, 10000),
        OfficialFile("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb", 31035623, 10000),
    ),
    test=(OfficialFile("test_batch", "40351d587109b95175f43aff81a1287e", 31035526, 10000),),
    label_key=b"labels",
    classes=10,
)

# CIFAR-100's byte sizes are not pinned here; its files count as official when they hold the
# official number of rows, and are then checked against the official MD5.
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    train=(OfficialFile("train", "16019d7e3df5f24257cddd4c9c7bbb53", None, 50000),),
    test=(OfficialFile("test", "f0ef6b0ae62326f3e7ffdfab6717acfc", None, 10000),),
    label_key=b"fine_labels",
    classes=100,
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


def md5sum(path: Path) -> str:
    """MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_folder(layout: CifarLayout, data_dir: Path | None) -> Path | None:
    """The batches folder: `data_dir/<folder>` or `data_dir` itself when it holds the files."""
    if data_dir is None:
        return None
    for candidate in (data_dir / layout.folder, data_dir):
        if (candidate / layout.test[0].name).is_file():
            return candidate
    return None


# The only globals a CIFAR batch (or a same-format subset written by numpy) refers to: numpy's
# array reconstruction under its old and new module names, and the codec Python 2 strings use.
SAFE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, numbers and numpy arrays, and nothing else.

    A pickle can name any importable callable and have it called while loading; a data file
    must not run code, so every other global is refused before it is looked up.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data batch")
        return super().find_class(module, name)


MAX_BATCH_BYTES = 64 * 2**20   # an official batch is 31 MB (10000 images); subsets are smaller


def load_batch_pickle(handle) -> object:
    """Unpickle one batch file with `BatchUnpickler` (Python 2 strings stay bytes)."""
    return BatchUnpickler(handle, encoding="bytes").load()


def download(layout: CifarLayout, data_dir: Path) -> None:
    """Fetch and unpack the official archive into `data_dir` (torchvision's utilities)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(layout.url, str(data_dir), md5=layout.archive_md5)


def locate_or_download(layout: CifarLayout, data_dir: Path | None, dataset: str) -> Path:
    """Find the batches folder, downloading the archive when the network allows."""
    folder = find_folder(layout, data_dir)
    if folder is not None:
        return folder
    target = data_dir or Path("data")
    hint = (f"{dataset} not found: put the official {layout.folder}/ folder (from "
            f"{layout.url}) under {target}, or pass --data-dir")
    if os.environ.get("ROBEVAL_OFFLINE") == "1":
        raise RobevalError(hint)
    try:
        target.mkdir(parents=True, exist_ok=True)
        download(layout, target)
    except Exception as err:  # any network or disk failure ends in the same advice
        raise RobevalError(f"{hint} (download failed: {type(err).__name__})") from err
    folder = find_folder(layout, target)
    if folder is None:
        raise RobevalError(hint)
    return folder


def read_batch(path: Path, official: OfficialFile, label_key: bytes,
               classes: int) -> ImageTensors:
    """Read one pickled batch; corrupt, truncated or mislabelled files are one-line errors."""
    fix = f"re-download it or restore the official {path.name}"
    if not path.is_file():
        raise RobevalError(f"missing data file {path}: {fix}")
    size = path.stat().st_size
    if size > MAX_BATCH_BYTES:
        raise RobevalError(f"data file {path} holds {size:,} bytes, more than any CIFAR batch "
                           f"({MAX_BATCH_BYTES:,} at most): {fix}")
    if official.size is not None and size == official.size:
        verify_md5(path, official, fix)
    try:
        with open(path, "rb") as handle:
            batch = load_batch_pickle(handle)
        data, labels = batch[b"data"], batch[label_key]
    except Exception as err:
        raise RobevalError(f"data file {path} is truncated or corrupt: {fix}") from err
    check_cifar_arrays(data, labels, classes, path)  # before any cast, which would hide bad values
    labels = np.asarray(labels, dtype=np.int64)
    if official.size is None and len(data) == official.rows:
        verify_md5(path, official, fix)
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageTensors(images, torch.from_numpy(labels))


def verify_md5(path: Path, official: OfficialFile, fix: str) -> None:
    """Compare a full-size file against the official checksum."""
    if md5sum(path) != official.md5:
        raise RobevalError(f"data file {path} fails the official MD5 check: {fix}")


def read_cifar(layout: CifarLayout, split: str, data_dir: Path | None, dataset: str) -> ImageTensors:
    """All batches of one split, concatenated in the official order."""
    folder = locate_or_download(layout, data_dir, dataset)
    files = layout.train if split == "train" else layout.test
    parts = [read_batch(folder / f.name, f, layout.label_key, layout.classes) for f in files]
    return ImageTensors(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


DATASETS.add("cifar10", DatasetEntry(
    DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
                classes=CIFAR10_CLASSES),
    lambda split, data_dir: read_cifar(CIFAR10, split, data_dir, "cifar10"),
), aliases=("cifar-10",))

DATASETS.add("cifar100", DatasetEntry(
    DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    lambda split, data_dir: read_cifar(CIFAR100, split, data_dir, "cifar100"),
), aliases=("cifar-100",))
