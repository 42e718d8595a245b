"""ImageNet as an image folder (`DIR/train/<class>/*.JPEG`, `DIR/val/<class>/*.JPEG`).

Streams from disk with the standard transforms: RandomResizedCrop + flip for training,
resize to 256 and centre-crop 224 for validation. Images stay in [0,1]; the model normalises.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

from robeval.data import DATASETS, DatasetEntry, DatasetInfo
from robeval.data.batches import Batch, shard_slice
from robeval.errors import RobevalError

IMAGE_SIZE = 224
RESIZE = 256  # validation resize before the centre crop (224/256 = 0.875)


def standard_transform(train: bool, size: int = IMAGE_SIZE):
    """torchvision's standard ImageNet train/val transforms, without normalisation."""
    from torchvision import transforms

    if train:
        return transforms.Compose([transforms.RandomResizedCrop(size),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    return transforms.Compose([transforms.Resize(round(size * RESIZE / IMAGE_SIZE)),
                               transforms.CenterCrop(size), transforms.ToTensor()])


class FolderSource:
    """An image folder streamed through a DataLoader, batches moved to `device`."""

    def __init__(self, root: Path, train: bool, device: torch.device | str = "cpu",
                 workers: int | None = None, size: int = IMAGE_SIZE):
        from torchvision.datasets import ImageFolder

        self.dataset = ImageFolder(str(root), transform=standard_transform(train, size))
        self.device = torch.device(device)
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers

    def __len__(self) -> int:
        return len(self.dataset)

    def to(self, device: torch.device | str) -> FolderSource:
        """Deliver batches on `device`."""
        self.device = torch.device(device)
        return self

    def batches(self, batch_size: int, seed: int = 0, shuffle: bool = False,
                drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """Batches of (images in [0,1], labels); `seed` fixes the order and the augmentation.

        With `shard=(rank, ranks)` this rank loads only its part of each global batch.
        """
        generator = torch.Generator().manual_seed(seed)
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        parts = [order[start:start + batch_size] for start in range(0, stop, batch_size)]
        batch_indices = [part[shard_slice(len(part), shard)].tolist() for part in parts]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batch_indices, num_workers=self.workers,
            generator=generator, pin_memory=self.device.type == "cuda")
        for images, labels in loader:
            yield (images.to(self.device, non_blocking=True),
                   labels.to(self.device, non_blocking=True))


def read_imagenet(split: str, data_dir: Path | None) -> FolderSource:
    """The `train` or `val` folder under `data_dir` as a streamed source."""
    folder = "train" if split == "train" else "val"
    if data_dir is None or not (data_dir / folder).is_dir():
        raise RobevalError(
            f"imagenet not found: pass --data-dir DIR with DIR/{folder}/<class>/<image> folders"
        )
    try:
        return FolderSource(data_dir / folder, train=split == "train")
    except FileNotFoundError as err:  # no class folders, or no images in them
        raise RobevalError(f"imagenet folder {data_dir / folder} holds no images: {err}") from err


DATASETS.add("imagenet", DatasetEntry(
    DatasetInfo("imagenet", 1000, 3, IMAGE_SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    read_imagenet,
))
