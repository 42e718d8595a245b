"""The embedded offline dataset: scikit-learn's bundled handwritten digits (no download).

The 1797 8×8 images (values 0–16) are scaled to uint8 and resized bilinearly to 32×32, one
channel, so CIFAR architectures run on them unchanged. A fixed permutation (seed 0) puts 1497
images in the training split and 300 in the test split.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from robeval.data import DATASETS, DatasetEntry, DatasetInfo, ImageTensors

TEST_SIZE = 300
IMAGE_SIZE = 32


@lru_cache(maxsize=1)
def _all_digits() -> ImageTensors:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                           align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return ImageTensors(images[order], labels[order])


def read_digits(split: str, data_dir: Path | None = None) -> ImageTensors:
    """The train or test split of the embedded digits; `data_dir` is not used."""
    data = _all_digits()
    index = torch.arange(len(data))
    return data.subset(index[TEST_SIZE:] if split == "train" else index[:TEST_SIZE])


DATASETS.add("digits", DatasetEntry(
    DatasetInfo("digits", 10, 1, IMAGE_SIZE, (0.3053,), (0.3237,), flip=False,
                classes=tuple(str(d) for d in range(10))),
    read_digits,
), aliases=("sklearn-digits",))
