"""Random numbers for corrupting a batch: one CPU generator per image, seeded by the image.

Each image's generator is seeded from (run seed, corruption, severity, the image's index in the
test set), so an image is corrupted the same way whatever batch it is in, whatever the batch
size, and on any device: the numbers are drawn on the CPU and then moved to the images' device,
where the arithmetic runs. Two models evaluated with the same seed see the same corrupted images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def sample_seeds(seed: int, corruption: str, severity: int, indices: Sequence[int]) -> list[int]:
    """One 63-bit generator seed per image index, from the run seed, corruption and severity."""
    seeds = []
    for index in indices:
        text = f"{int(seed)}/{corruption}/{int(severity)}/{int(index)}".encode()
        digest = hashlib.blake2b(text, digest_size=8).digest()
        seeds.append(int.from_bytes(digest, "little") & (2**63 - 1))
    return seeds


class Draws:
    """Per-image random draws for a batch, returned as (images, *shape) tensors on `device`."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str):
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def _stack(self, draw: Callable[[torch.Generator], Tensor]) -> Tensor:
        return torch.stack([draw(generator) for generator in self.generators]).to(self.device)

    def uniform(self, shape: Sequence[int], low: float = 0.0, high: float = 1.0) -> Tensor:
        """Uniform in [low, high) (float32)."""
        unit = self._stack(lambda g: torch.rand(tuple(shape), generator=g, dtype=torch.float64))
        return (low + (high - low) * unit).float()

    def normal(self, shape: Sequence[int], mean: float = 0.0, std: float = 1.0) -> Tensor:
        """Normal with `mean` and `std` (float32)."""
        unit = self._stack(lambda g: torch.randn(tuple(shape), generator=g, dtype=torch.float64))
        return (mean + std * unit).float()

    def integers(self, low: int, high: int, shape: Sequence[int] = ()) -> Tensor:
        """Whole numbers in [low, high) (int64)."""
        return self._stack(lambda g: torch.randint(low, high, tuple(shape), generator=g))

    def poisson(self, rates: Tensor) -> Tensor:
        """Poisson counts with the given per-image rates (float32, on `rates`' device)."""
        cpu = rates.detach().double().cpu()
        counts = [torch.poisson(cpu[i], generator=g) for i, g in enumerate(self.generators)]
        return torch.stack(counts).to(rates.device).float()
