"""The library's CPU feature detection (kernels/src/x86_features.cpp) against the Linux kernel's
own view of the CPU (/proc/cpuinfo flags, which the kernel clears for states it does not enable)."""
from __future__ import annotations

import platform
from pathlib import Path

import pytest

from binarize.kernels import available_isas

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64" or not Path("/proc/cpuinfo").is_file(),
                                reason="x86-64 Linux only")


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("/proc/cpuinfo lists no flags")


# The CPU features each x86 path needs, as /proc/cpuinfo names them, fastest path first.
ISA_CPU_FLAGS = {
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vpopcntdq", "avx2", "popcnt"},
    "avx512bw": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "popcnt"},
    "avx2": {"avx2", "popcnt"},
}


def test_available_isas_follow_the_cpu_flags():
    flags = cpu_flags()
    expected = [isa for isa, needed in ISA_CPU_FLAGS.items() if needed <= flags]
    assert available_isas() == tuple(expected + ["scalar", "reference"])
