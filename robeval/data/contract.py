"""The data contract: what robeval trains and evaluates on, checked before anything is cast.

A cast hides a wrong file: NaN becomes 0, 455 becomes 199, -1 becomes 255, floats in [0,1]
become black images, label 3.7 becomes 3 and True becomes class 1. The checks here refuse such
data with a one-line `RobevalError` naming the file (or argument) and the first offending row.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import torch

from robeval.errors import RobevalError, short_repr

CIFAR_ROW = 3 * 32 * 32      # one CIFAR image: R, G, B planes of 32×32, channel-major
CHUNK = 4096                 # rows scanned at a time for the first offending one


def check_cifar_arrays(data: object, labels: object, classes: int, file: str | PathLike,
                       row_size: int = CIFAR_ROW) -> None:
    """Refuse a CIFAR batch unless `data` is uint8 (N, row_size) and `labels` N ints in 0..classes-1."""
    name = Path(file).name
    fix = f"the file is not an official-format CIFAR batch; re-download it or restore the official {name}"
    problem = data_problem(data, row_size) or labels_problem(labels, classes, len(data))
    if problem:
        raise RobevalError(f"data file {file}: {problem}: {fix}")


def data_problem(data: object, row_size: int) -> str | None:
    """Why `data` is not a uint8 array of shape (N, row_size), or None when it is."""
    wanted = f"must be uint8 (N, {row_size})"
    if not isinstance(data, np.ndarray):
        return f"data has type {type(data).__name__}, {wanted}"
    if data.dtype != np.uint8:
        row = first_bad_pixel_row(data)
        where = "" if row is None else f"; row {row[0]} holds {show(row[1])}, not a whole number in 0..255"
        return f"data has dtype {data.dtype}, {wanted}{where}"
    if data.ndim != 2 or data.shape[1] != row_size:
        return f"data has unexpected shape {data.shape}, {wanted}"
    return None


def first_bad_pixel_row(data: np.ndarray) -> tuple[int, object] | None:
    """The first row holding a value that is not a whole number in 0..255, and that value."""
    numeric = np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)
    if not numeric or data.ndim == 0 or data.size == 0:
        return None
    rows = data.reshape(len(data), -1)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(chunk) | (chunk < 0) | (chunk > 255) | (chunk != np.round(chunk))
        hits = np.flatnonzero(bad.any(axis=1))
        if len(hits):
            row = int(hits[0])
            return start + row, chunk[row][bad[row]][0]
    return None


def labels_problem(labels: object, classes: int, rows: int) -> str | None:
    """Why `labels` is not one integer class in 0..classes-1 per row, or None when it is."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            return f"labels have shape {labels.shape}, must be one integer class per row"
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)):
        return f"labels have type {type(labels).__name__}, must be a list of integer classes"
    for index, label in enumerate(labels):
        if not is_integer(label) or not 0 <= label < classes:
            return f"labels[{index}] is {show(label)}, not an integer class in 0..{classes - 1}"
    if len(labels) != rows:
        return f"{len(labels)} labels for {rows} rows of data, must be one label per row"
    return None


def is_integer(value: object) -> bool:
    """A Python or numpy integer; bool is refused even though Python counts it as an int."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def show(value: object) -> str:
    """A value as a short, one-line text for an error message."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != round(value, 4):   # 3.7 and 7.0 as they are
        return f"{value:.4g}"
    return short_repr(value)


# --- tensors from the Python API --------------------------------------------------------------

SHAPE = "images must be a float tensor of shape (N, C, H, W) with values in [0,1]"


def check_image_tensors(images: object, labels: object, classes: int | None = None) -> None:
    """Refuse images that are not finite floats N×C×H×W in [0,1], or labels not ints (N,).

    Labels must be non-negative, and below `classes` when it is given. Each error is one line
    and names the first offending image or label.
    """
    problem = images_problem(images) or label_tensor_problem(labels, len(images), classes)
    if problem:
        raise RobevalError(problem)


def images_problem(images: object) -> str | None:
    """Why `images` is not a non-empty float tensor N×C×H×W in [0,1], or None when it is."""
    if not isinstance(images, torch.Tensor):
        return f"images have type {type(images).__name__}: {SHAPE}"
    if not images.is_floating_point():
        hint = " (divide uint8 images by 255)" if images.dtype == torch.uint8 else ""
        return f"images have dtype {images.dtype}: {SHAPE}{hint}"
    if images.ndim != 4:
        return f"images have shape {tuple(images.shape)}: {SHAPE}"
    if len(images) == 0:
        return "images is empty: pass at least one image"
    bad = ~((images >= 0) & (images <= 1))     # NaN compares False both ways, so it is caught
    hits = torch.nonzero(bad.flatten(1).any(dim=1))
    if len(hits) == 0:
        return None
    index = int(hits[0])
    value = float(images[index][bad[index]][0])
    if value != value or abs(value) == float("inf"):
        return f"images[{index}] holds {value}: images must be finite and lie in [0,1]"
    return (f"images[{index}] holds {value:.4g}: images must lie in [0,1]; undo any normalisation "
            "(put it inside the model)")


def label_tensor_problem(labels: object, n: int, classes: int | None) -> str | None:
    """Why `labels` is not an integer tensor (n,) of classes, or None when it is."""
    wanted = f"labels must be an integer tensor of shape ({n},), one class per image"
    if not isinstance(labels, torch.Tensor):
        return f"labels have type {type(labels).__name__}: {wanted}"
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        return f"labels have dtype {labels.dtype}{first_label(labels)}: {wanted}"
    if tuple(labels.shape) != (n,):
        return f"labels have shape {tuple(labels.shape)}: {wanted}"
    bad = labels < 0 if classes is None else (labels < 0) | (labels >= classes)
    hits = torch.nonzero(bad)
    if len(hits) == 0:
        return None
    index = int(hits[0])
    span = "be class indices, 0 or more" if classes is None else f"lie in 0..{classes - 1}"
    return f"labels[{index}] is {int(labels[index])}: labels must {span}"


def first_label(labels: torch.Tensor) -> str:
    """`(labels[i] is v)` for the first label that is not a whole number, else nothing."""
    if labels.dtype == torch.bool or labels.is_complex() or labels.ndim != 1:
        return ""
    hits = torch.nonzero(labels != labels.round())     # NaN is not equal to itself
    if len(hits) == 0:
        return ""
    index = int(hits[0])
    return f" (labels[{index}] is {float(labels[index]):.4g})"
