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
import neon_mca  # noqa: E402
from binarize import runtime  # noqa: E402
from binarize.kernels import available_isas  # noqa: E402


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_clock_from_the_add_chain_is_a_real_clock(tmp_path):
    """Mutation caught: the chain written as `add $1` (an Intel core since Golden Cove folds those at
    rename: this suite's Intel AVX-512 VM then read 20.5 GHz and every MACs-per-cycle figure was 6x low)."""
    ghz = bench_kernels.measure_clock_ghz(tmp_path, repeats=20)
    assert 0.5 < ghz < 7.0


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
@pytest.mark.parametrize("isa", sorted(bench_kernels.LOOP_STEPS))
def test_a_loop_step_alone_is_faster_than_the_loop_in_place(isa, tmp_path):
    """The "step limit" bench_kernels prints beside the loop-bound layer's rate must be its ceiling: the
    same instructions without the register blocks' setup and flushes. Mutations caught: the avx2 step
    of nibble parts counted as 512 binary MACs (one byte lane per bit instead of a nibble of 4) read
    40 against the loop's 66 on AMD Zen 1; the step of count tables counted as 256 (one product per
    lookup byte instead of 4) read a quarter of its 194, below the loop's 110, on AMD Zen 3; the
    sub-step of byte tables counted as 256 (2 products per lookup byte instead of 8) read 32 against
    the loop's 82 there. A path this CPU cannot run is not measured (no illegal instruction)."""
    if isa not in available_isas():
        assert bench_kernels.measure_step_limit(isa, 3.0, tmp_path) is None
        return
    ghz = bench_kernels.measure_clock_ghz(tmp_path, repeats=20)
    step = bench_kernels.measure_step_limit(isa, ghz, tmp_path)
    c, size = bench_kernels.LOOP_BOUND_LAYER
    rng = np.random.default_rng(0)
    feed = {"X": rng.standard_normal((1, c, size, size)).astype(np.float32)}
    (us,) = bench_kernels.median_us([runtime.session(bench_kernels.binary_model(c, size, rng), threads=1, isa=isa)],
                                    feed, runs=10, rounds=2)
    loop = bench_kernels.binary_macs(c, size) / (us * 1e-6 * ghz * 1e9)
    assert loop < step < 10 * loop


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


@pytest.mark.parametrize("kernel, residuals", [(3, 1), (1, 2)])
def test_fusion_benchmark_compares_the_same_computation(kernel, residuals):
    """bench_fusion times the op with its residual(s) inside against the version-1 op and ONNX Adds:
    on every path both must compute the same sum (ONNX Runtime's own Add as the reference), or the
    fused/unfused ratio compares different work. Mutations caught: the two models drawn with different
    weights; a fused model built without its second residual."""
    import bench_fusion
    from binarize.runtime import session

    rng = np.random.default_rng(0)
    c, m, size = 70, 13, 7  # a partial channel word, a partial channel block, 49 pixels: blocks of P and P - 1
    fused, unfused = (bench_fusion.layer_model(c, m, kernel, size, residuals, f) for f in (True, False))
    feed = {"X": rng.standard_normal((1, c, size, size)).astype(np.float32)}
    feed.update({name: rng.standard_normal((1, m, size, size)).astype(np.float32)
                 for name in bench_fusion.RESIDUALS[:residuals]})
    for isa in available_isas():
        expected = session(unfused, isa=isa).run(None, feed)[0]
        np.testing.assert_allclose(session(fused, isa=isa).run(None, feed)[0], expected, rtol=1e-6, atol=1e-5,
                                   err_msg=isa)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64 cross-compiler")
@pytest.mark.parametrize("isa", sorted(neon_mca.ISAS))
def test_neon_mca_finds_the_hot_loop_it_times(isa):
    """benchmarks/neon_mca.py finds its loop by the tile's template arguments, which kernel changes
    rename: it lost the loop when the residual slots became one (stop 28) and again when the vector
    count did (stop 30). The loop it hands to llvm-mca must be a counting loop of the whole block."""
    define, _, _, vectors = neon_mca.ISAS[isa]
    loop = neon_mca.hot_loop(neon_mca.assembly_for(define), isa, vectors)
    assert loop.count("\tcnt\t") >= 4
