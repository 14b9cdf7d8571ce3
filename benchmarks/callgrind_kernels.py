"""Instruction counts of the BinaryConv2d kernels per path, for one layer (valgrind --tool=callgrind).

    PYTHONPATH=. python benchmarks/callgrind_kernels.py [--layer 256 14] [--library other.so]
    PYTHONPATH=. python benchmarks/callgrind_kernels.py --resnet18 --paths avx2  # whole model: fused vs unfused

Counts are repeatable on a busy machine (same code, same input: same count), so a kernel change
can be judged without timing noise: build the library before and after, run this on both. Only
instructions inside the library's activation packing (pack_pixels) and convolution (conv_tile,
with the register blocks and epilogue it calls) are counted, for one session.run of a 3x3,
stride 1, pad 1, C -> C layer (the model of bench_kernels.py); "per MAC" divides by its
C*C*9*H*W binary multiply-accumulates.

With ``--resnet18`` the count is of one whole ``session.run`` (every ONNX Runtime op; the
difference of two processes, 1 and 6 runs, over 5) of ResNet-18 224x224 (biper, defaults; ``bench_models.build_models``)
exported with the default fusion and with ``fuse_residual_adds=False``, and of the float model, so
that what the fused epilogues remove is a repeatable number.

Valgrind does not implement AVX-512 and hides it from the program's CPUID, so the avx512 and
avx512bw paths cannot be counted; the paths the library reports under valgrind are (ONNX Runtime's
own kernels also take their AVX2 paths there).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def child(library, isa, model_path, runs="1"):
    """Runs inside valgrind: only numpy and onnxruntime (importing binarize would import torch)."""
    import numpy as np
    import onnxruntime as ort

    if isa == "list":
        import ctypes
        lib = ctypes.CDLL(library)
        lib.binarize_available_isas.restype = ctypes.c_char_p
        print("ISAS=" + lib.binarize_available_isas().decode())
        return
    os.environ["BINARIZE_ISA"] = isa
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    (first,) = session.get_inputs()
    shape = [d if isinstance(d, int) else 1 for d in first.shape]  # a symbolic batch: 1
    feed = {first.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(int(runs)):
        session.run(None, feed)


def valgrind(args, workdir: Path, tool_options=()) -> str:
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / 'callgrind.out'}", *tool_options,
               sys.executable, __file__, "--child", *args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if result.returncode != 0:
        raise RuntimeError(f"valgrind failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
    return result.stdout


def count(library, isa, model_path, workdir: Path) -> dict:
    """Instructions executed in pack_pixels and conv_tile (inclusive) of this path."""
    functions = {"pack": "pack_pixels", "conv": "conv_tile"}
    # (Patterns naming the ISA namespace, *isa_avx2::*conv_tile*, silently match nothing in
    # valgrind 3.19; the child runs one path only, and the annotation below checks it.)
    valgrind([library, isa, str(model_path)], workdir, [f"--toggle-collect=*{name}*" for name in functions.values()])
    annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(workdir / "callgrind.out")],
                               capture_output=True, text=True, check=True).stdout
    counts = {}
    for key, name in functions.items():
        match = re.search(rf"^\s*([\d,]+) .*isa_{isa}::.*{name}\(", annotated, re.MULTILINE)
        counts[key] = int(match.group(1).replace(",", "")) if match else 0
    return counts


def count_run(library, isa, model_path, workdir: Path, runs: int = 5) -> int:
    """Instructions of one session.run of the model on this path: the whole child process with
    1 + runs calls minus the same with 1 call, over runs (ONNX Runtime's wheel has no symbols to
    toggle collection on; with one thread nothing else differs between the two processes)."""
    totals = []
    for calls in (1, 1 + runs):
        valgrind([library, isa, str(model_path), str(calls)], workdir)
        summary = subprocess.run(["callgrind_annotate", str(workdir / "callgrind.out")], capture_output=True,
                                 text=True, check=True).stdout
        totals.append(int(re.search(r"^\s*([\d,]+) .*PROGRAM TOTALS", summary, re.MULTILINE).group(1).replace(",", "")))
    return round((totals[1] - totals[0]) / runs)


def count_resnet18(library, isas, workdir: Path) -> None:
    from bench_models import build_models

    paths = build_models(workdir, 1, "resnet18", "biper", {}, int8_float_layers=False, unfused=True)
    print("callgrind instruction counts, one session.run of ResNet-18 224x224 (biper), 1 thread")
    print(f"{'path':<10}{'binary (fused)':>18}{'unfused':>18}{'fused / unfused':>17}{'float':>18}")
    for isa in isas:
        fused, unfused, float_model = (count_run(library, isa, paths[label], workdir)
                                       for label in ("binary", "unfused", "float"))
        print(f"{isa:<10}{fused:>18,}{unfused:>18,}{fused / unfused:>17.3f}{float_model:>18,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, nargs=2, default=[256, 14], metavar=("CHANNELS", "SIZE"))
    parser.add_argument("--library", help="the op library to count (default: the package's libbinarize_ort)")
    parser.add_argument("--resnet18", action="store_true",
                        help="count whole-model runs of ResNet-18 (fused and unfused export, float) instead of a layer")
    parser.add_argument("--paths", nargs="+", metavar="ISA",
                        help="count only these kernel paths (default: every path the library runs under valgrind)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    import numpy as np

    from bench_kernels import binary_macs, binary_model
    from binarize.kernels import library_path

    library = str(Path(args.library).resolve()) if args.library else library_path()
    c, size = args.layer
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_path = workdir / "layer.onnx"
        model_path.write_bytes(binary_model(c, size, np.random.default_rng(0)))
        listed = valgrind([library, "list", str(model_path)], workdir)
        isas = [isa for isa in listed.split("ISAS=", 1)[1].strip().split(",") if isa != "reference"]
        if args.paths:
            missing = sorted(set(args.paths) - set(isas))
            if missing:
                parser.error(f"--paths {' '.join(missing)}: not run by the library under valgrind (it runs {', '.join(isas)})")
            isas = [isa for isa in isas if isa in args.paths]
        if args.resnet18:
            count_resnet18(library, isas, workdir)
            return
        macs = binary_macs(c, size)
        print(f"callgrind instruction counts, one BinaryConv2d {c}@{size}x{size} run, 1 thread ({macs / 1e6:.1f} M binary MACs)")
        print(f"library: {library}; paths under valgrind: {', '.join(isas)} (valgrind hides AVX-512)")
        print(f"{'path':<10}{'packing':>14}{'convolution':>14}{'total':>14}{'per 1k MACs':>13}")
        for isa in isas:
            counts = count(library, isa, model_path, workdir)
            total = counts["pack"] + counts["conv"]
            print(f"{isa:<10}{counts['pack']:>14,}{counts['conv']:>14,}{total:>14,}{total / macs * 1000:>13.2f}")


if __name__ == "__main__":
    main()
