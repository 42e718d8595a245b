"""How a CPU process gets its memory: glibc settings that keep a training loop off the kernel."""

from __future__ import annotations

import ctypes

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc, else None (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
    except (OSError, AttributeError):
        return None
    return libc


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    A CPU training step frees and re-allocates the same activation-sized blocks every batch.
    By default glibc hands large freed blocks back (munmap, heap trimming), and the next batch
    faults them in again, page by page and zeroed. Fixed thresholds keep them in the heap:
    one-thread cnn-small training ran about 9% faster with bit-identical weights (docs/design.md,
    "Where an epoch's time goes, and the allocator"). Returns whether glibc took the settings;
    elsewhere (macOS, Windows, musl) it does nothing and returns False.
    """
    libc = glibc()
    if libc is None:
        return False
    settings = [(_M_MMAP_THRESHOLD, 32 << 20),   # glibc's ceiling for this threshold on 64 bits
                (_M_TRIM_THRESHOLD, 1 << 30),
                (_M_TOP_PAD, 256 << 20)]
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
