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


def test_available_isas_follow_the_cpu_flags():
    flags = cpu_flags()
    expected = []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vpopcntdq", "avx2", "popcnt"} <= flags:
        expected.append("avx512")
    if {"avx2", "popcnt"} <= flags:
        expected.append("avx2")
    assert available_isas() == tuple(expected + ["scalar", "reference"])
