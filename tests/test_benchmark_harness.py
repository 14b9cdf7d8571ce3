"""The timing harness the benchmarks share (benchmarks/bench_kernels.py): the clock it divides by and
the shared-pool timing of several sessions at a thread count. The benchmarks themselves are not run
here (their numbers live in benchmarks/RESULTS.md); these check that what they print is built on
sound measurements."""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_kernels  # noqa: E402
from binarize.kernels import available_isas  # noqa: E402


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_clock_from_the_add_chain_is_a_real_clock(tmp_path):
    """Mutation caught: the chain written as `add $1` (an Intel core since Golden Cove folds those at
    rename: this suite's Intel AVX-512 VM then read 20.5 GHz and every MACs-per-cycle figure was 6x low)."""
    ghz = bench_kernels.measure_clock_ghz(tmp_path, repeats=20)
    assert 0.5 < ghz < 7.0


def test_sessions_on_a_shared_pool_time_every_candidate():
    rng = np.random.default_rng(0)
    binary = bench_kernels.binary_model(64, 8, rng)
    plain = bench_kernels.float_model(64, 8, rng).SerializeToString()
    feed = {"X": rng.standard_normal((1, 64, 8, 8)).astype(np.float32)}
    tables = [([(binary, None), (binary, "scalar"), (plain, None)], feed), ([(plain, None)], feed)]
    times, (plain_again,) = bench_kernels.median_us_threads(tables, runs=20, threads=2, rounds=2)
    assert len(times) == 3 and all(0 < t < 1e6 for t in times + [plain_again])
    if available_isas()[0] != "scalar":  # the same work as the fastest path, one word at a time
        assert times[1] > times[0]
