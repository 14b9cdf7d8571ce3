"""The kernel paths the kernel tests run: every path this CPU offers, and the avx2 path once per
counting (its count tables and its nibble parts, which the kernel picks per layer and
BINARIZE_AVX2_COUNTING forces), so that each counting meets every shape whatever the layer rule."""
from __future__ import annotations

import contextlib
import os

from binarize.kernels import available_isas

ISAS = available_isas()
AVX2_COUNTINGS = ("tables", "nibbles")
# Every path the library has, "avx2/<counting>" for the avx2 path's countings.
ALL_PATHS = ["avx512", "avx512bw", *(f"avx2/{counting}" for counting in AVX2_COUNTINGS), "neon", "scalar", "reference"]


def runnable_paths() -> list:
    """The paths of ALL_PATHS this CPU runs."""
    return [path for path in ALL_PATHS if path.partition("/")[0] in ISAS]


@contextlib.contextmanager
def kernel_path(path: str):
    """Yields the isa of `path` ("avx2/nibbles" -> "avx2") with its counting forced for the sessions
    created inside."""
    isa, _, counting = path.partition("/")
    previous = os.environ.get("BINARIZE_AVX2_COUNTING")
    if counting:
        os.environ["BINARIZE_AVX2_COUNTING"] = counting
    try:
        yield isa
    finally:
        if previous is None:
            os.environ.pop("BINARIZE_AVX2_COUNTING", None)
        else:
            os.environ["BINARIZE_AVX2_COUNTING"] = previous
