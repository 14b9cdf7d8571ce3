"""Instruction counts of the BinaryConv2d kernels per path, for one layer (valgrind --tool=callgrind).

    PYTHONPATH=. python benchmarks/callgrind_kernels.py [--layer 256 14] [--library other.so]

Counts are repeatable on a busy machine (same code, same input: same count), so a kernel change
can be judged without timing noise: build the library before and after, run this on both. Only
instructions inside the library's activation packing (pack_pixels) and convolution (conv_tile,
with the register blocks and epilogue it calls) are counted, for one session.run of a 3x3,
stride 1, pad 1, C -> C layer (the model of bench_kernels.py); "per MAC" divides by its
C*C*9*H*W binary multiply-accumulates.

Valgrind does not implement AVX-512 and hides it from the program's CPUID, so the avx512 and
avx512bw paths cannot be counted; the paths the library reports under valgrind are.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def child(library, isa, model_path):
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
    shape = session.get_inputs()[0].shape
    session.run(None, {"X": np.random.default_rng(0).standard_normal(shape).astype(np.float32)})


def valgrind(args, workdir: Path, tool_options=()) -> str:
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / 'callgrind.out'}", *tool_options,
               sys.executable, __file__, "--child", *args]
    result = subprocess.run(command, capture_output=True, text=True)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, nargs=2, default=[256, 14], metavar=("CHANNELS", "SIZE"))
    parser.add_argument("--library", help="the op library to count (default: the package's libbinarize_ort)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
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
