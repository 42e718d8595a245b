"""Batches on the device: uint8 tensors held there, augmented there in whole batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor]


class BatchSource(Protocol):
    """Anything that yields (images in [0,1], labels) batches on a device.

    With `shard=(rank, ranks)` each global batch of `batch_size` images is cut into `ranks`
    equal parts and only part `rank` is yielded: the ranks of a distributed job together see
    exactly the batches one process would see with the same seed.
    """

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, seed: int, shuffle: bool = False,
                drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]: ...


def shard_slice(size: int, shard: tuple[int, int]) -> slice:
    """The positions of part `rank` of `ranks` in a batch of `size` (sizes differ by at most one)."""
    rank, ranks = shard
    return slice(rank * size // ranks, (rank + 1) * size // ranks)


def random_crop(images: Tensor, padding: int, offsets: Tensor) -> Tensor:
    """Crops of the zero-padded images at `offsets` (2, N): one (row, column) per image."""
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = offsets.to(images.device)
    rows = offsets[0][:, None] + torch.arange(height, device=images.device)      # (N, H)
    cols = offsets[1][:, None] + torch.arange(width, device=images.device)       # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_flip(images: Tensor, flip: Tensor) -> Tensor:
    """Flip horizontally the images where the boolean `flip` is set."""
    flip = flip.to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class TensorSource:
    """A split held on the device as uint8; batches are converted to float in [0,1] there.

    All randomness (order, crops, flips) comes from a CPU generator seeded by the caller and
    is drawn for the whole global batch, so the same seed gives the same batches on any device
    and any number of ranks, which makes resumed and distributed training exact.
    """

    def __init__(self, images: Tensor, labels: Tensor, device: torch.device | str = "cpu",
                 augment: bool = False, flip: bool = True, padding: int = 4):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.augment, self.flip, self.padding = augment, flip, padding

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batches(self, batch_size: int, seed: int = 0, shuffle: bool = False,
                drop_last: bool = False, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """Batches of (float images in [0,1], labels), shuffled and augmented when asked."""
        generator = torch.Generator().manual_seed(seed)
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.device)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            index = order[start:start + batch_size]
            part = shard_slice(len(index), shard)
            images = self.images[index[part]]
            if self.augment:
                offsets = torch.randint(0, 2 * self.padding + 1, (2, len(index)),
                                        generator=generator)
                images = random_crop(images, self.padding, offsets[:, part])
                if self.flip:
                    flips = torch.rand(len(index), generator=generator) < 0.5
                    images = random_flip(images, flips[part])
            yield images.float().div_(255), self.labels[index[part]]
