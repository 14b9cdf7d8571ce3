"""Per-layer speed of BinaryConv2d (every kernel path) against ONNX Runtime's float and int8 Conv.

    PYTHONPATH=. python benchmarks/bench_kernels.py [--runs 400] [--threads 1 2]
    PYTHONPATH=. python benchmarks/bench_kernels.py --crossover [--runs 200]

``--crossover``: where binary pays. 1x1 and 3x3 convs of 8-512 input channels (to 128 channels on
56x56 and to 256 on 14x14), the fastest binary path against ORT float, 1 thread, next to the
estimate of ``binarize.passes.layer_cost`` that ``convert``'s cost rule (``keep_costly_float``) uses.

Every model is a single 3x3 convolution (stride 1, pad 1, batch 1, C -> C channels) run through
onnxruntime.InferenceSession.run with the same input and thread count, all candidates of a table
on one intra-op pool that they share (``median_us_threads``: sessions on pools of their own
disturb each other's multi-thread runs); the time is the median over --runs calls after warm-up
(candidates interleaved in rounds), so it includes ORT's per-run overhead (the "empty run" row
measures that floor). The int8 model is a static per-channel QDQ quantization of the float model
(onnxruntime.quantization.quantize_static), which ORT executes as QuantizeLinear -> QLinearConv
-> DequantizeLinear; likewise BinaryConv2d takes float in and gives float out, with the
binarization of the input inside the op.

Binary MACs per cycle (1 thread): the layer's C*M*9*H*W sign products over the median time times
the core clock, which is measured here by timing a chain of dependent integer adds (one per
cycle on every x86 core; compiled with the system C compiler). Next to it, per path, the same on
a loop-bound layer (3x3, 512 -> 512 channels on 12x12: 4608 MACs per output and per packed input
float, so the inner loop takes nearly all of its time; its packed weights are 288 KiB, twice that
in the avx2 path's nibble layout): the measured throughput of the inner loop in place, the
practical limit of each path. And the "step limit": the loop's step alone (LOOP_STEPS: its loads,
xors or lookups, popcounts and adds as the library's compiled loop has them, in registers and L1,
compiled here), the most its instruction mix allows on
this core, measured for the avx2 and avx512 paths where the CPU runs them. Instruction counts:
benchmarks/callgrind_kernels.py.
"""
from __future__ import annotations

import argparse
import ctypes
import multiprocessing
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from binarize import packing, runtime
from binarize.kernels import available_isas

LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, spatial size)
CROSSOVER_CHANNELS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)
CROSSOVER_OUTPUTS = ((128, 56), (256, 14))  # (output channels, spatial size)
LOOP_BOUND_LAYER = (512, 12)
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("binarize", 1)]


def finish(graph) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 10  # onnxruntime 1.31 accepts IR <= 13
    return model


def io(c, size, out=None):
    return ([helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c, size, size])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, out or c, size, size])])


def binary_initializers(c, out, kernel, rng) -> list:
    """Random packed signs "W" ([out, c, kernel, kernel]), "multiplier" and "bias" of a BinaryConv2d."""
    signs = np.where(rng.random((out, c, kernel, kernel)) < 0.5, -1.0, 1.0).astype(np.float32)
    return [numpy_helper.from_array(packing.pack_weight(signs), "W"),
            numpy_helper.from_array(rng.uniform(0.5, 1.5, out).astype(np.float32), "multiplier"),
            numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "bias")]


def binary_model(c, size, rng, kernel=3, out=None) -> bytes:
    """A ``kernel`` x ``kernel`` BinaryConv2d, stride 1, "same" padding, ``c`` -> ``out`` (default ``c``) channels."""
    out, pad = out or c, kernel // 2
    node = helper.make_node("BinaryConv2d", ["X", "W", "multiplier", "bias"], ["Y"], domain="binarize",
                            kernel_shape=[kernel, kernel], in_channels=c, pads=[pad] * 4)
    inits = binary_initializers(c, out, kernel, rng)
    return finish(helper.make_graph([node], "binary", *io(c, size, out), initializer=inits)).SerializeToString()


def float_model(c, size, rng, kernel=3, out=None) -> onnx.ModelProto:
    out, pad = out or c, kernel // 2
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[kernel, kernel], pads=[pad] * 4)
    inits = [numpy_helper.from_array((rng.standard_normal((out, c, kernel, kernel)) * 0.05).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), "B")]
    return finish(helper.make_graph([node], "float", *io(c, size, out), initializer=inits))


class RandomCalibration(CalibrationDataReader):
    def __init__(self, c, size, rng, count=4):
        self.batches = iter([{"X": rng.standard_normal((1, c, size, size)).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def int8_model(float_proto: onnx.ModelProto, c, size, rng, workdir: Path) -> bytes:
    source, target = workdir / f"float_{c}.onnx", workdir / f"int8_{c}.onnx"
    onnx.save(float_proto, source)
    quantize_static(str(source), str(target), RandomCalibration(c, size, rng), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    model = onnx.load(target)
    model.ir_version = 10
    return model.SerializeToString()


def empty_model() -> bytes:
    node = helper.make_node("Identity", ["X"], ["Y"])
    graph = helper.make_graph([node], "empty", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    return finish(graph).SerializeToString()


def median_us(sessions, feed, runs, rounds=5) -> list:
    """Median time per session; the sessions take turns in `rounds` rounds so that a change in
    machine load (shared virtual CPUs) hits all of them alike."""
    samples = [[] for _ in sessions]
    for session in sessions:
        for _ in range(max(20, runs // 10)):
            session.run(None, feed)
    for _ in range(rounds):
        for session, times in zip(sessions, samples):
            for _ in range(runs // rounds):
                start = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - start)
    return [statistics.median(times) * 1e6 for times in samples]


def median_us_threads(tables, runs, threads, rounds=5) -> list:
    """For each ``(models, feed)`` in ``tables``: :func:`median_us` of one session per ``(model, isa)``
    in ``models`` (ONNX bytes or path; isa None for the default path), timed together; every session
    runs on one pool of ``threads`` intra-op threads that they share, in one child process for all
    the tables. Returns one list of times per table.

    Why one shared pool: sessions with pools of their own disturb each other when they take turns
    in one process. A pool's workers keep spinning after each run, on the cores the next session's
    workers need (ResNet-18 binary at 2 threads, this file's Intel AVX-512 VM: 3.9 ms alone, 5.9 ms
    taking turns with the float and int8 sessions on their own pools, 3.9 ms again on one shared
    pool). One process-wide pool (ONNX Runtime's global thread pool) is what a server running
    several models uses. Its size is fixed when the process creates its first session, hence a
    child process per thread count."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_median_us_in_shared_pool, (tables, runs, threads, rounds))


def _median_us_in_shared_pool(tables, runs, threads, rounds) -> list:
    from onnxruntime.capi import _pybind_state  # the only Python entry to the global pool's size
    _pybind_state.set_global_thread_pool_sizes(threads, 1)

    def shared_pool_session(model, isa):
        options = ort.SessionOptions()
        options.use_per_session_threads = False
        return runtime.session(model, isa=isa, sess_options=options)

    return [median_us([shared_pool_session(model, isa) for model, isa in models], feed, runs, rounds)
            for models, feed in tables]


def binary_macs(c, size) -> int:
    """Sign products of one C -> C 3x3 convolution at stride 1, pad 1 (padding taps included)."""
    return c * c * 9 * size * size


ADD_CHAIN_SOURCE = """
#include <stdint.h>
/* 64 dependent register-register adds per iteration: 64 cycles. Not `add $1`: Intel cores since
   Golden Cove fold small immediate adds at rename, and such a chain ran at "20 GHz" there. */
uint64_t add_chain(uint64_t iterations, uint64_t step) {
    uint64_t x = 0;
    for (uint64_t i = 0; i < iterations; ++i)
        __asm__ volatile(".rept 64\\n\\tadd %1, %0\\n\\t.endr" : "+r"(x) : "r"(step));
    return x;
}
"""


def compiled_function(workdir: Path, stem: str, name: str, source: str, argtypes: list, restype, flags=()):
    """Function `name` of C `source`, compiled here into `stem`.so with the system C compiler (-O2 and
    `flags`; one stem per source: the loader reuses a path it has opened) and loaded with ctypes;
    None without a compiler or when it fails."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    source_path, library = workdir / f"{stem}.c", workdir / f"{stem}.so"
    source_path.write_text(source)
    if subprocess.run([compiler, "-O2", "-shared", "-fPIC", *flags, str(source_path), "-o", str(library)],
                      capture_output=True).returncode != 0:
        return None
    function = getattr(ctypes.CDLL(str(library)), name)
    function.argtypes, function.restype = argtypes, restype
    return function


def fastest_seconds(call, repeats: int) -> float:
    """The fastest of `repeats` timings of call(): on a shared machine, the one least disturbed by
    other jobs and by time slicing."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def measure_clock_ghz(workdir: Path, iterations=100_000, repeats=60):
    """Core clock from a dependent add chain (latency 1 cycle); the fastest of `repeats` short
    (~2 ms) timings (longer chains measured 1.7 instead of 4.1 GHz on a shared machine). None
    without a C compiler."""
    add_chain = compiled_function(workdir, "add_chain", "add_chain", ADD_CHAIN_SOURCE,
                                  [ctypes.c_uint64, ctypes.c_uint64], ctypes.c_uint64)
    if add_chain is None:
        return None
    return 64 * iterations / fastest_seconds(lambda: add_chain(iterations, 1), repeats) / 1e9


def _step_asm(load_activation, compare, count, add, weight_load, pixels, vectors, register, first_acc,
              temps, lane_bytes, first_weight):
    """One reduction step (or sub-step) of a register block as GCC compiles the path's loop: per
    pixel the load of its activation operand into register 1 (`load_activation(p)`: a broadcast
    word, or AVX2's byte table, looked up from the activation byte), per vector its comparison with
    the weights (`compare`: a xor, or the table lookup; the weights are registers loaded once per
    step by `weight_load`, or memory operands where it is None), `count` (a popcount, or nothing
    after a lookup) and an add into the block's accumulator."""
    lines, temp = [], 0
    if weight_load:
        lines += [f"{weight_load} {lane_bytes * v}(%[w]), %%{register}{first_weight + v}" for v in range(vectors)]
    for p in range(pixels):
        lines += load_activation(p)
        for v in range(vectors):
            t = f"%%{register}{temps[temp % len(temps)]}"
            temp += 1
            weights = f"%%{register}{first_weight + v}" if weight_load else f"{lane_bytes * v}(%[w])"
            acc = f"%%{register}{first_acc + p * vectors + v}"
            lines += [f"{compare} {weights}, %%{register}1, {t}", *count(t), f"{add} {t}, {acc}, {acc}"]
    return "\\n\\t".join(lines)


# The inner loop's step alone, per path that has one here: (compiler flags, asm of one step, vector
# registers and general registers it writes, binary MACs per step). avx2: one of a step's 8
# sub-steps (a byte of the 64-channel word), 4 pixels x 2 vectors of 16 channels: per pixel its
# activation byte, times 32, indexes the 8 KiB byte tables (here all in L1, as in the loop), one
# lookup per 16 channels x 8 inputs, the 2 weight vectors loaded once per sub-step; avx512:
# 6 pixels x 4 vectors of 8 words (vpopcntq), the 4 weight vectors loaded once per step.
LOOP_STEPS = {
    "avx2": (["-mavx2"],
             _step_asm(lambda p: [f"movzbl {8 * p}(%[a]), %%eax", "shl $5, %%rax", "vmovdqu (%[a], %%rax), %%ymm1"],
                       "vpshufb", lambda t: [], "vpaddb", "vmovdqu", 4, 2, "ymm", 2, [10, 11, 14], 32, 12),
             16, ["rax"], 4 * 2 * 16 * 8),
    "avx512": (["-mavx512f", "-mavx512vpopcntdq"],
               _step_asm(lambda p: [f"vpbroadcastq {8 * p}(%[a]), %%zmm1"], "vpxorq", lambda t: [f"vpopcntq {t}, {t}"],
                         "vpaddq", "vmovdqu64", 6, 4, "zmm", 4, [0, 2, 3], 64, 28), 32, [], 6 * 4 * 512),
}
LOOP_STEP_SOURCE = """
#include <stdint.h>
/* 4 steps per iteration, on registers and L1 (activations and weights never change address). */
void loop_steps(uint64_t iterations, const void* activations, const void* weights) {
    for (uint64_t i = 0; i < iterations; ++i)
        __asm__ volatile("STEP\\n\\tSTEP\\n\\tSTEP\\n\\tSTEP" :: [a] "r"(activations), [w] "r"(weights) : CLOBBERS);
}
"""


def measure_step_limit(isa: str, ghz: float, workdir: Path, iterations=20_000, repeats=40):
    """Binary MACs per cycle of the path's loop step alone (LOOP_STEPS): the throughput its instruction
    mix allows on this core, above the loop-bound layer's, which adds each register block's setup and
    flushes. None for a path without a step here, one this CPU cannot run, or without a C compiler."""
    if isa not in LOOP_STEPS or isa not in available_isas():
        return None
    flags, step, registers, general_registers, macs = LOOP_STEPS[isa]
    clobbers = ", ".join([f'"xmm{r}"' for r in range(registers)] + [f'"{r}"' for r in general_registers])
    source = LOOP_STEP_SOURCE.replace("STEP", step).replace("CLOBBERS", clobbers)
    loop_steps = compiled_function(workdir, f"steps_{isa}", "loop_steps", source,
                                   [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_void_p], None, flags)
    if loop_steps is None:
        return None
    buffer = np.zeros(1024, np.uint64)
    address = buffer.ctypes.data
    seconds = fastest_seconds(lambda: loop_steps(iterations, address, address + 4096), repeats)
    return 4 * iterations * macs / (seconds * ghz * 1e9)


def plain_session(model, threads) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--crossover", action="store_true", help="only the table of where binary pays")
    args = parser.parse_args()
    if args.crossover:
        print_crossover(args.runs)
        return
    isas = [isa for isa in available_isas() if isa != "reference"]
    rng = np.random.default_rng(0)
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c, size in LAYERS:
            fp = float_model(c, size, rng)
            models[c] = (binary_model(c, size, rng), fp.SerializeToString(), int8_model(fp, c, size, rng, Path(tmp)))

    columns = [f"binary {isa}" for isa in isas] + ["ORT float", "ORT int8"]
    print(f"onnxruntime {ort.__version__}; times in microseconds (median of {args.runs} runs); "
          f"speed-up = ORT time / binary time")
    single_thread_times = {}
    for threads in args.threads:
        tables = [([(empty_model(), None)], {"X": np.ones(1, np.float32)})]
        for c, size in LAYERS:
            binary, fp, int8 = models[c]
            tables.append(([(binary, isa) for isa in isas] + [(fp, None), (int8, None)],
                           {"X": rng.standard_normal((1, c, size, size)).astype(np.float32)}))
        (overhead,), *layer_times = median_us_threads(tables, args.runs, threads)
        print(f"\nthreads = {threads}   (empty run, ORT per-call floor: {overhead:.1f} us)")
        header = f"{'layer':<12}" + "".join(f"{name:>17}" for name in columns)
        header += "".join(f"{'float/' + isa:>16}{'int8/' + isa:>15}" for isa in isas)
        print(header)
        for (c, size), (*times, float_time, int8_time) in zip(LAYERS, layer_times):
            if threads == 1:
                single_thread_times[c, size] = dict(zip(isas, times))
            row = f"{f'{c}@{size}x{size}':<12}" + "".join(f"{t:>17.1f}" for t in times + [float_time, int8_time])
            row += "".join(f"{float_time / t:>15.1f}x{int8_time / t:>14.1f}x" for t in times)
            print(row)
    if single_thread_times:
        print_macs_per_cycle(isas, single_thread_times, rng, max(20, args.runs // 20))


def print_crossover(runs):
    """Float/binary time of 1x1 and 3x3 convs by input channels, against the cost rule's estimate."""
    from binarize.passes import BINARY_FIXED_MACS, BINARY_WORD_MACS, binary_kernel_macs

    rng, isa = np.random.default_rng(0), available_isas()[0]
    print(f"binary path {isa} against ORT float, 1 thread, median of {runs} runs; estimate: float MACs per output "
          f"value over {BINARY_FIXED_MACS} + {BINARY_WORD_MACS} per packed 64-bit word (binarize.passes.layer_cost)")
    print(f"{'layer':<22}{'binary us':>11}{'float us':>11}{'float/binary':>14}{'estimate':>10}")
    for kernel in (1, 3):
        for out, size in CROSSOVER_OUTPUTS:
            for c in CROSSOVER_CHANNELS:
                feed = {"X": rng.standard_normal((1, c, size, size)).astype(np.float32)}
                sessions = [runtime.session(binary_model(c, size, rng, kernel, out), threads=1, isa=isa),
                            plain_session(float_model(c, size, rng, kernel, out).SerializeToString(), 1)]
                binary, fp = median_us(sessions, feed, runs)
                taps = kernel * kernel
                estimate = taps * c / binary_kernel_macs(taps, c)
                print(f"{f'{kernel}x{kernel} {c}->{out}@{size}x{size}':<22}{binary:>11.1f}{fp:>11.1f}{fp / binary:>13.2f}x"
                      f"{estimate:>9.2f}x", flush=True)


def print_macs_per_cycle(isas, times, rng, runs):
    with tempfile.TemporaryDirectory() as tmp:
        ghz = measure_clock_ghz(Path(tmp))
    if ghz is None:
        print("\nbinary MACs per cycle: no C compiler to measure the clock with")
        return
    c, size = LOOP_BOUND_LAYER
    feed = {"X": rng.standard_normal((1, c, size, size)).astype(np.float32)}
    loop_bound = median_us([runtime.session(binary_model(c, size, rng), threads=1, isa=isa) for isa in isas], feed, runs)
    with tempfile.TemporaryDirectory() as tmp:
        step_limits = [measure_step_limit(isa, ghz, Path(tmp)) for isa in isas]
    per_cycle = lambda macs, us: macs / (us * 1e-6 * ghz * 1e9)  # noqa: E731
    print(f"\nbinary MACs per cycle, 1 thread (clock {ghz:.2f} GHz, from a dependent-add chain); "
          f"'loop limit': the {c}@{size}x{size} loop-bound layer (median of {runs} runs); "
          f"'step limit': the loop's step alone, in registers and L1")
    print(f"{'path':<10}" + "".join(f"{f'{l}@{s}x{s}':>12}" for l, s in times) + f"{'loop limit':>12}{'step limit':>12}"
          f"{'256@14 / limit':>16}")
    for isa, limit_us, step_limit in zip(isas, loop_bound, step_limits):
        limit = per_cycle(binary_macs(c, size), limit_us)
        achieved = [per_cycle(binary_macs(l, s), layer[isa]) for (l, s), layer in times.items()]
        share = f"{achieved[[l for l, _ in times].index(256)] / limit:>16.0%}" if (256, 14) in times else ""
        step = f"{step_limit:>12.0f}" if step_limit is not None else f"{'-':>12}"
        print(f"{isa:<10}" + "".join(f"{a:>12.0f}" for a in achieved) + f"{limit:>12.0f}" + step + share)

if __name__ == "__main__":
    main()
