"""End to end: a torchvision model (ResNet-18 by default) at 224x224, batch 1, in ONNX Runtime -
binarized vs float vs int8.

The binarized model is ``binarize.convert(model, "biper")`` in stage 2 with the defaults (for
ResNet-18: first conv, fc and the 1x1 downsample convs in float; ``--convert KEY=VALUE`` overrides
a conversion option, ``--model`` / ``--method`` pick others), exported by ``binarize.export``; the float
model is the same network exported with the same settings; the int8 model is that float file
quantized by ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights, uint8
activations, calibrated on a few random images). Weights are random (nothing is downloaded):
latency and file size do not depend on their values.

Prints one table: file size and median latency per thread count, with the binarized model's
ratios measured side by side in the same run (the sessions take turns, on one shared intra-op pool
per thread count). Where a target of issue 11 for the binary path this CPU runs (AVX-512: >= 8x
faster than float, >= 3x faster than int8; AVX2 and others: >= 5x, >= 2.5x; >= 11x smaller than
float; 2 threads >= 1.6x faster than 1 when both are timed) is missed, or with
``--profile``, an ONNX Runtime profile of the binarized model shows the time per op type.
``--unfused`` adds the binary model exported with ``fuse_residual_adds=False`` (every shortcut Add
and the ReLUs that feed shortcuts as ONNX ops, BinaryConv2d v1) to the same interleaved run. ``--results`` appends the
table, with the command, to a Markdown file (benchmarks/RESULTS.md).

    python benchmarks/bench_models.py --results benchmarks/RESULTS.md
    python benchmarks/bench_models.py --model mobilenet_v2 --convert shortcut=conv --threads 1
    python benchmarks/bench_models.py --int8-float-layers    # binary layers + the float convs in int8
    python benchmarks/bench_models.py --threads 1 --unfused  # Adds and ReLUs in the binary op vs separate
    python benchmarks/bench_models.py --threads 1 --isa avx2  # another kernel path of this CPU, its targets
"""
from __future__ import annotations

import argparse
import ast
import collections
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import binarize
from binarize.converters import to_onnx
from binarize.kernels import available_isas
from binarize.runtime import session
from bench_kernels import median_us_threads  # benchmarks/ is on sys.path when this script runs

#: Issue 11's ResNet-18 speed-ups at 1 thread over ORT float and int8, by the family of the binary
#: kernel path this CPU runs (avx512 and avx512bw: AVX-512's; every other path: AVX2's).
SPEED_TARGETS = {"avx512": (8.0, 3.0), "other": (5.0, 2.5)}


def targets_for(isa: str) -> dict:
    """Every target of the binary path ``isa``; "2 threads over 1" applies where both are timed."""
    over_float, over_int8 = SPEED_TARGETS["avx512" if isa.startswith("avx512") else "other"]
    return {"speed-up over float": over_float, "speed-up over int8": over_int8,
            "size reduction over float": 11.0, "2 threads over 1": 1.6}


INPUT_SHAPE = (1, 3, 224, 224)


class RandomImages(CalibrationDataReader):
    def __init__(self, input_name: str, count: int, rng: np.random.Generator):
        self.batches = iter([{input_name: rng.standard_normal(INPUT_SHAPE).astype(np.float32)} for _ in range(count)])

    def get_next(self):
        return next(self.batches, None)


def build_models(workdir: Path, calibration_images: int, name: str, method: str, options: dict,
                 int8_float_layers: bool, unfused: bool = False) -> dict:
    """Write the three ONNX files (four with ``unfused``: the binary model exported with
    fuse_residual_adds=False, its double-skip Adds as separate ONNX Adds); returns {label: path}."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    example = torch.randn(INPUT_SHAPE)
    labels = ("binary", "unfused", "float", "int8") if unfused else ("binary", "float", "int8")
    paths = {label: workdir / f"{name}_{label}.onnx" for label in labels}
    bnn = binarize.convert(model, method, **options)
    print(f"{name}, {method} {options or ''}: {len(bnn.binarize_plan.binary)} binary layers, "
          f"{len(bnn.binarize_plan.kept_float)} float")
    if method == "biper":
        binarize.set_stage(bnn, 2)
    calibration = ([torch.from_numpy(batch) for batch in (np.random.default_rng(0).standard_normal(INPUT_SHAPE)
                                                          .astype(np.float32) for _ in range(calibration_images))]
                   if int8_float_layers else None)
    binarize.export(bnn, paths["binary"], example, calibration=calibration)
    if unfused:
        binarize.export(bnn, paths["unfused"], example, calibration=calibration, fuse_residual_adds=False)
    float_proto = to_onnx(model, example)  # same exporter settings as the binary model
    paths["float"].write_bytes(float_proto.SerializeToString())
    input_name = float_proto.graph.input[0].name
    quantize_static(str(paths["float"]), str(paths["int8"]),
                    RandomImages(input_name, calibration_images, np.random.default_rng(0)),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return paths


def convert_options(parser: argparse.ArgumentParser, items: list) -> dict:
    """binarize.convert keyword arguments from repeated ``--convert KEY=VALUE`` (VALUE a Python
    literal, else a string)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--convert {item!r}: expected KEY=VALUE")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def op_type_profiles(paths: dict, feed: dict, threads: int, runs: int, workdir: Path, isa: str) -> dict:
    """{label: [(op type, ms per inference, share)], largest first} from ONNX Runtime's profiler,
    the models' runs interleaved (as the timings) so that a change in load hits them alike."""
    sessions = {}
    for label, path in paths.items():
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(workdir / f"profile_{label}")
        sessions[label] = session(path, threads=threads, isa=isa, sess_options=options)
    for _ in range(runs):
        for profiled in sessions.values():
            profiled.run(None, feed)
    profiles = {}
    for label, profiled in sessions.items():
        events = json.loads(Path(profiled.end_profiling()).read_text())
        totals = collections.Counter()
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                totals[event["args"]["op_name"]] += event["dur"]
        whole = sum(totals.values())
        profiles[label] = [(op, us / runs / 1000, us / whole) for op, us in totals.most_common()]
    return profiles


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.machine())


def profile_table(profiles: dict) -> list:
    """Markdown rows: ms per inference and share per op type, one column pair per profiled model."""
    labels = list(profiles)
    ops = list(dict.fromkeys(op for label in labels for op, _, _ in profiles[label]))
    cells = {label: {op: (ms, share) for op, ms, share in profiles[label]} for label in labels}
    rows = ["| op type | " + " | ".join(f"{label} ms | share" for label in labels) + " |",
            "|---|" + "---|---|" * len(labels)]
    for op in ops:
        row = [f"{cells[label][op][0]:.3f} | {cells[label][op][1]:.1%}" if op in cells[label] else "- | -"
               for label in labels]
        rows.append(f"| {op} | " + " | ".join(row) + " |")
    return rows


def markdown_report(title: str, command: str, sizes: dict, latencies: dict, profiles: dict, missed: list,
                    isa: str) -> str:
    threads = min(latencies)
    lines = ["", f"## End to end, {title}", "",
             f"Machine: {cpu_name()} ({os.cpu_count()} CPUs visible); onnxruntime {ort.__version__}, "
             f"torch {torch.__version__}; binary kernel path: {isa}.",
             "Command, from the repository root:", "", f"    {command}", "", "```", *table(sizes, latencies), "```"]
    if missed:
        lines += ["", "Targets missed: " + "; ".join(missed) + "."]
    if profiles:
        lines += ["", f"Where the time goes (ORT profile, threads={threads}, per inference):", "",
                  *profile_table(profiles)]
    return "\n".join(lines) + "\n"


def table(sizes: dict, latencies: dict) -> list:
    threads = sorted(latencies)
    header = f"{'model':<8}{'file MB':>10}{'size ratio':>12}" + "".join(
        f"{f'{t} thread ms':>15}{'speed-up':>10}" for t in threads)
    rows = [header]
    for label in sizes:
        row = f"{label:<8}{sizes[label] / 1e6:>10.2f}{sizes[label] / sizes['binary']:>11.1f}x"
        for t in threads:
            ms = latencies[t][label]
            row += f"{ms:>15.2f}{ms / latencies[t]['binary']:>9.1f}x"
        rows.append(row)
    rows.append("(ratios: that model's size / time over the binary model's; batch 1, 224x224, median)")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model and thread count")
    parser.add_argument("--rounds", type=int, default=5,
                        help="turns the sessions take (more rounds: shorter blocks, less exposed to load changes)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--results", type=Path, help="append the results as Markdown to this file")
    parser.add_argument("--model", default="resnet18", help="a torchvision model name (default resnet18)")
    parser.add_argument("--method", default="biper", help="binarization method (default biper)")
    parser.add_argument("--int8-float-layers", action="store_true",
                        help="export the binary model with calibration=, so its float convs run in int8")
    parser.add_argument("--unfused", action="store_true",
                        help="also time the binary model exported with fuse_residual_adds=False (its "
                             "shortcut Adds and ReLUs as ONNX ops), side by side, and profile both")
    parser.add_argument("--profile", action="store_true", help="profile the binary model(s) even if the targets hold")
    parser.add_argument("--isa", choices=available_isas(),
                        help="the binary models' kernel path (default: the fastest this CPU runs); the targets "
                             "are that path's")
    parser.add_argument("--convert", action="append", default=[], metavar="KEY=VALUE",
                        help="a binarize.convert option, e.g. shortcut=conv (repeatable)")
    args = parser.parse_args()
    options = convert_options(parser, args.convert)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        paths = build_models(workdir, args.calibration_images, args.model, args.method, options,
                             args.int8_float_layers, args.unfused)
        sizes = {label: path.stat().st_size for label, path in paths.items()}
        labels = list(paths)
        feed = {session(paths["binary"]).get_inputs()[0].name: np.random.default_rng(1).standard_normal(
            INPUT_SHAPE).astype(np.float32)}
        latencies = {}
        for threads in args.threads:
            binary_isa = {"binary": args.isa, "unfused": args.isa}
            times, = median_us_threads([([(str(paths[label]), binary_isa.get(label)) for label in labels], feed)],
                                       args.runs, threads, args.rounds)
            latencies[threads] = dict(zip(labels, (us / 1000 for us in times)))
        one = latencies[min(args.threads)]
        measured = {"speed-up over float": one["float"] / one["binary"],
                    "speed-up over int8": one["int8"] / one["binary"],
                    "size reduction over float": sizes["float"] / sizes["binary"]}
        if {1, 2} <= set(latencies):
            measured["2 threads over 1"] = latencies[1]["binary"] / latencies[2]["binary"]
        isa = args.isa or available_isas()[0]
        targets = targets_for(isa)
        missed = [f"{name} {value:.2f}x < {targets[name]:g}x" for name, value in measured.items()
                  if value < targets[name]]
        profiled = [label for label in ("binary", "unfused") if label in paths] if missed or args.profile else []
        profiles = (op_type_profiles({label: paths[label] for label in profiled}, feed, min(args.threads),
                                     args.profile_runs, workdir, isa) if profiled else {})

    print("\n".join(table(sizes, latencies)))
    for name, value in measured.items():
        where = "binary model" if name == "2 threads over 1" else f"threads={min(args.threads)}"
        print(f"{name}: {value:.2f}x (target {targets[name]:g}x for the {isa} path; {where})")
    for label, profile in profiles.items():
        print(f"\n{label} model, ORT profile per op type (threads={min(args.threads)}, per inference):")
        for op, ms, share in profile:
            print(f"  {op:<22}{ms:>8.3f} ms {share:>7.1%}")
    if args.results:
        with open(args.results, "a") as results:
            title = f"{args.model} ({args.method}{''.join(f', {k}={v}' for k, v in options.items())}" + (
                ", float layers in int8)" if args.int8_float_layers else ")")
            results.write(markdown_report(title, command, sizes, latencies, profiles, missed, isa))
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
