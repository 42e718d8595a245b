"""tune_cpu_allocator: freed blocks stay in the process instead of going back to the kernel."""

import subprocess
import sys

import pytest

from robeval.allocator import glibc, tune_cpu_allocator

GLIBC = sys.platform.startswith("linux") and glibc() is not None

# A fresh interpreter frees a 16 MiB block and reports how much of it the process still holds.
PROBE = """
import ctypes, sys
from robeval.allocator import tune_cpu_allocator
if sys.argv[1] == "tuned":
    assert tune_cpu_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
size = 16 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
held = resident()
libc.free(block)
print((resident() - held + size) / size)
"""


def held_after_free(mode: str) -> float:
    """Fraction of a freed 16 MiB block still resident, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    return float(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_tuned_allocator_keeps_freed_memory_that_the_default_returns():
    assert held_after_free("default") < 0.1
    assert held_after_free("tuned") > 0.9


def test_tuning_is_taken_where_glibc_is_and_repeatable():
    assert tune_cpu_allocator() is tune_cpu_allocator() is (glibc() is not None)


def test_cli_tunes_the_allocator_before_any_command(monkeypatch):
    from click.testing import CliRunner

    from robeval import cli as cli_module

    calls = []
    monkeypatch.setattr(cli_module, "tune_cpu_allocator", lambda: calls.append(1) or True)
    result = CliRunner().invoke(cli_module.cli, ["report", "--help"])
    assert result.exit_code == 0 and calls == [1]
