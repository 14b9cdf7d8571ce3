"""The model-zoo table of issue 11: for each torchvision model (random weights, nothing downloaded),
the default ``binarize.convert`` + ``binarize.export`` against the float model and its int8
(QDQ) quantization in ONNX Runtime: file size and 1-thread latency at 224x224, batch 1, the
three sessions of a model timed in turns (bench_models.build_models and median_us, so each ratio
is measured side by side). Models run one after another, each row printed as soon as it is
measured; a model that fails to convert or export gets its error in the table instead.

    python benchmarks/bench_zoo.py --runs 30 --results benchmarks/RESULTS.md
    python benchmarks/bench_zoo.py --models resnet18 mobilenet_v2 --method bireal
    python benchmarks/bench_zoo.py --models vit_b_16 --convert binarize_linear=True --runs 5
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from bench_kernels import median_us  # benchmarks/ is on sys.path when this script runs
from bench_models import INPUT_SHAPE, build_models, convert_options, cpu_name
from binarize.kernels import available_isas
from binarize.runtime import session

ZOO = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
       "regnet_x_400mf", "shufflenet_v2_x1_0", "vgg11_bn", "googlenet")
FLOAT_LAYERS = ("Conv", "Gemm", "MatMul")
HEADER = ("| model | binary layers (float convs / fc) | binary MB | float MB | int8 MB | size vs float | binary ms | "
          "float ms | int8 ms | speed-up vs float | vs int8 |")


def measure(name: str, method: str, options: dict, runs: int, calibration_images: int, workdir: Path) -> str:
    """One Markdown row for model ``name``, converted with ``options``."""
    start = time.perf_counter()
    paths = build_models(workdir, calibration_images, name, method, options, False)
    sizes = {label: path.stat().st_size / 1e6 for label, path in paths.items()}
    feed = {session(paths["binary"]).get_inputs()[0].name:
            np.random.default_rng(1).standard_normal(INPUT_SHAPE).astype(np.float32)}
    sessions = [session(paths[label], threads=1) for label in ("binary", "float", "int8")]
    binary, float_ms, int8 = (us / 1000 for us in median_us(sessions, feed, runs))
    nodes = onnx.load(paths["binary"]).graph.node
    layers = (sum(node.domain == "binarize" for node in nodes), sum(node.op_type in FLOAT_LAYERS for node in nodes))
    print(f"  ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return (f"| {name} | {layers[0]} ({layers[1]}) | {sizes['binary']:.2f} | {sizes['float']:.2f} | "
            f"{sizes['int8']:.2f} | {sizes['float'] / sizes['binary']:.1f}x | {binary:.2f} | {float_ms:.2f} | "
            f"{int8:.2f} | {float_ms / binary:.2f}x | {int8 / binary:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), help="torchvision model names")
    parser.add_argument("--method", default="biper", help="binarization method (default biper, as bench_models)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model and session")
    parser.add_argument("--calibration-images", type=int, default=2, help="for the int8 model's quantize_static")
    parser.add_argument("--results", type=Path, help="append the table as Markdown to this file")
    parser.add_argument("--convert", action="append", default=[], metavar="KEY=VALUE",
                        help="a binarize.convert option for every model, e.g. binarize_linear=True (repeatable)")
    args = parser.parse_args()
    options = convert_options(parser, args.convert)
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    print("\n".join(rows), flush=True)
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = measure(name, args.method, options, args.runs, args.calibration_images, Path(tmp))
            except Exception as error:  # reported in the table: the point is to see which models fail
                row = f"| {name} | failed: {type(error).__name__}: {str(error).splitlines()[0][:160]} |"
        rows.append(row)
        print(row, flush=True)
    if args.results:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        text = ["", f"## Model zoo ({args.method}{''.join(f', {k}={v}' for k, v in options.items())}, 1 thread, "
                    f"224x224, batch 1)", "",
                f"Machine: {cpu_name()}; binary kernel path: {available_isas()[0]}. Command, from the repository "
                f"root:", "", f"    {command}", "", *rows, ""]
        with open(args.results, "a") as results:
            results.write("\n".join(text))


if __name__ == "__main__":
    main()
