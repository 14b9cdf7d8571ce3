"""Does the fused residual pay, per layer shape? One BinaryConv2d with its residual(s) as op inputs
(version 2 / 3: the Add in the op's epilogue) against the version-1 op followed by ONNX Adds, on
the layer shapes of ResNet-18 (3x3, one residual) and ResNet-50's bottlenecks (1x1, one residual,
or two: the block's shortcut and the double skip), 1 thread, sessions interleaved.

    OMP_NUM_THREADS=1 python benchmarks/bench_fusion.py [--runs 200] [--isa avx2]
    OMP_NUM_THREADS=1 python benchmarks/bench_fusion.py --library /tmp/old/libbinarize_ort.so

``--models`` does the same for whole torchvision models (the default ``convert``, biper stage 2,
exported with and without ``fuse_residual_adds``; random weights). ``--library`` also times the
fused model (and, for ``--models``, the unfused one) on another build of the op library (e.g. the
one before a kernel change), side by side in the same rounds, and checks that both builds give the
same output bits. Against float and int8: ``bench_models.py --unfused``. Instruction counts:
``callgrind_kernels.py``.

    OMP_NUM_THREADS=1 python benchmarks/bench_fusion.py --models resnet18 resnet50 --library OLD.so
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from bench_kernels import binary_initializers, finish, median_us  # benchmarks/ is on sys.path when this script runs
from bench_models import INPUT_SHAPE, build_models
from binarize import runtime
from binarize.kernels import available_isas

# (input channels, output channels, kernel, spatial size, residuals)
LAYERS = [(64, 64, 3, 56, 1), (128, 128, 3, 28, 1), (256, 256, 3, 14, 1), (512, 512, 3, 7, 1),
          (64, 256, 1, 56, 2), (256, 64, 1, 56, 1), (128, 512, 1, 28, 2), (512, 128, 1, 28, 1)]
RESIDUALS = ("R1", "R2")


def layer_model(c, m, kernel, size, residuals, fused, seed=0) -> bytes:
    """``c`` -> ``m`` channels, stride 1, "same" padding, plus ``residuals`` residual inputs: in the
    op (``fused``; version 2 for one, 3 for two) or as ONNX Adds after a version-1 op. The weights
    depend on ``seed`` only, so the fused and unfused models of a seed compute the same sum."""
    inits = binary_initializers(c, m, kernel, np.random.default_rng(seed))
    names = RESIDUALS[:residuals]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, c, size, size])] + [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, m, size, size]) for name in names]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, m, size, size])]
    attributes = dict(kernel_shape=[kernel, kernel], in_channels=c, pads=[kernel // 2] * 4)
    operands = ["X", "W", "multiplier", "bias"]
    if fused:
        nodes = [helper.make_node("BinaryConv2d", operands + ["", *names], ["Y"], domain="binarize", **attributes)]
    else:
        sums = [f"sum{i}" for i in range(residuals)] + ["Y"]
        nodes = [helper.make_node("BinaryConv2d", operands, [sums[0]], domain="binarize", **attributes)]
        nodes += [helper.make_node("Add", [sums[i], name], [sums[i + 1]]) for i, name in enumerate(names)]
    model = finish(helper.make_graph(nodes, "layer", inputs, outputs, initializer=inits))
    model.opset_import[1].version = 1 + residuals if fused else 1
    return model.SerializeToString()


def other_library_session(model, library: str, isa: str | None) -> ort.InferenceSession:
    """A 1-thread session on another build of the op library (binarize.runtime.session always
    registers the package's own)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if isa is not None:
        options.add_session_config_entry(runtime.ISA_CONFIG_KEY, isa)
    options.register_custom_ops_library(library)
    model = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def same_bits(first: ort.InferenceSession, second: ort.InferenceSession, feed: dict) -> bool:
    return np.array_equal(first.run(None, feed)[0].view(np.uint32), second.run(None, feed)[0].view(np.uint32))


def time_row(name: str, models: list, feed: dict, args, isa: str, compared: int) -> str:
    """One printed row. ``models`` = [fused, unfused] (bytes or paths): this build's two sessions,
    then with ``--library`` the other build's sessions of the first ``compared`` models."""
    sessions = [runtime.session(model, threads=1, isa=isa) for model in models]
    if args.library:
        others = [other_library_session(model, args.library, isa) for model in models[:compared]]
        for this, other in zip(sessions, others):
            if not same_bits(this, other, feed):
                raise SystemExit(f"{name}: the two builds give different outputs")
        sessions += others
    times = median_us(sessions, feed, args.runs, args.rounds)
    row = f"{name:<24}{times[0]:>10.1f}{times[1]:>10.1f}{times[0] / times[1]:>15.3f}"
    for this, other in zip(times, times[2:]):
        row += f"{other:>13.1f}{this / other:>12.3f}"
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--isa", choices=available_isas(), help="kernel path (default: the fastest this CPU runs)")
    parser.add_argument("--library", help="another build of libbinarize_ort.so to time the same models on")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="whole torchvision models (224x224, batch 1) instead of the layer shapes")
    args = parser.parse_args()
    isa = args.isa or available_isas()[0]
    compared = 2 if args.models else 1  # layers: the other build's fused op only
    print(f"{isa} path, 1 thread, medians of {args.runs} runs in {args.rounds} rounds (us)")
    other = "".join(f"{'other ' + label:>13}{'this/other':>12}" for label in ("fused", "unfus.")[:compared])
    print(f"{'model' if args.models else 'layer':<24}{'fused':>10}{'unfused' if args.models else 'op + Add':>10}"
          f"{'fused/unfused':>15}" + (other if args.library else ""))
    rng = np.random.default_rng(0)
    if args.models:
        for name in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                paths = build_models(Path(tmp), 1, name, "biper", {}, False, unfused=True)
                feed = {runtime.session(paths["binary"]).get_inputs()[0].name:
                        rng.standard_normal(INPUT_SHAPE).astype(np.float32)}
                print(time_row(name, [paths["binary"], paths["unfused"]], feed, args, isa, compared), flush=True)
        return
    for c, m, kernel, size, residuals in LAYERS:
        feed = {"X": rng.standard_normal((1, c, size, size)).astype(np.float32)}
        feed.update({name: rng.standard_normal((1, m, size, size)).astype(np.float32) for name in RESIDUALS[:residuals]})
        models = [layer_model(c, m, kernel, size, residuals, fused) for fused in (True, False)]
        print(time_row(f"{kernel}x{kernel} {c}->{m}@{size} +{residuals}R", models, feed, args, isa, compared), flush=True)


if __name__ == "__main__":
    main()
