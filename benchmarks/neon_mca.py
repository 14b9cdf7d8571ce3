"""Predicted throughput of the aarch64 inner loops (neon and scalar) with llvm-mca, no ARM hardware.

    python benchmarks/neon_mca.py          (needs aarch64-linux-gnu-g++ and llvm-mca-19)

Compiles kernels/src/isa_kernels.cpp for aarch64 as the library build does (-O3, per ISA), takes
the hot loop of the 4-pixel register block (of a tile without residuals: the innermost loop that
holds the `cnt` instructions, one reduction step per iteration) and asks llvm-mca for its
steady-state cycles per iteration on each CPU model. One iteration handles pixels x channels x 64 bit products (neon: 4 x 8, scalar: 4 x 4), so bits/cycle = that / cycles. llvm-19
is needed for the Neoverse/Cortex-A55 models (llvm-14 silently substitutes a Cortex-A57).
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPUS = ["neoverse-n1", "cortex-a76", "cortex-a55"]
# (define, channels per block (MB), pixels (P), vectors per block (kVectors)) as in the Isa traits.
ISAS = {"neon": ("BINARIZE_ISA_NEON", 8, 4, 4), "scalar": ("BINARIZE_ISA_SCALAR", 4, 4, 4)}


def hot_loop(assembly: str, isa: str, vectors: int) -> str:
    """The innermost `cnt` loop of the 4-pixel tile of a whole channel block (`vectors` vectors)
    without residuals or activation (from its label to the branch back to it): in
    conv_block<4, vectors, 0, false>, or in conv_blocks<vectors, 0, false> where GCC inlines the
    tiles there (GCC 12 does on both paths), whose 4-pixel loop is the one with the most `cnt`
    instructions."""
    function = (re.search(rf"^_ZN8binarize\d*isa_{isa}\S*conv_blockILi4ELi{vectors}ELi0ELb0EE\S*:$(.*?)\.size",
                          assembly, re.M | re.S)
                or re.search(rf"^_ZN8binarize\d*isa_{isa}\S*conv_blocksILi{vectors}ELi0ELb0EE\S*:$(.*?)\.size",
                             assembly, re.M | re.S))
    if function is None:
        raise RuntimeError(f"neither conv_block<4, {vectors}, 0, false> nor conv_blocks<{vectors}, 0, false> "
                           f"found for {isa}")
    lines = function.group(1).splitlines()
    loops = []
    for start, line in enumerate(lines):
        label = re.match(r"^(\.L\d+):$", line)
        if not label:
            continue
        for end in range(start + 1, len(lines)):
            if re.match(rf"^\s+b(\.\w+|ne|eq|gt|lt|hi|lo|cc|cs)?\s+{re.escape(label.group(1))}$", lines[end]):
                body = lines[start + 1:end + 1]
                if any("\tcnt\t" in b for b in body) and not any(re.match(r"^\.L\d+:$", b) for b in body):
                    loops.append("\n".join(body) + "\n")
                break
    if not loops:
        raise RuntimeError(f"no cnt loop found in the 4-pixel tile for {isa}")
    return max(loops, key=lambda loop: loop.count("\tcnt\t"))


def assembly_for(define: str) -> str:
    """kernels/src/isa_kernels.cpp compiled for aarch64 with `define` (-O3, as the library build)."""
    return subprocess.run(
        ["aarch64-linux-gnu-g++", "-std=c++17", "-O3", "-fno-math-errno", "-S", f"-D{define}",
         f"-I{ROOT / 'kernels/src'}", str(ROOT / "kernels/src/isa_kernels.cpp"), "-o", "-"],
        check=True, capture_output=True, text=True).stdout


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for isa, (define, channels, pixels, vectors) in ISAS.items():
            loop = Path(tmp, f"{isa}.s")
            loop.write_text(hot_loop(assembly_for(define), isa, vectors))
            for cpu in CPUS:
                report = subprocess.run(["llvm-mca-19", "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}",
                                         "-iterations=1000", str(loop)], check=True, capture_output=True, text=True).stdout
                cycles = int(re.search(r"^Total Cycles:\s+(\d+)", report, re.M).group(1)) / 1000
                rows.append((cpu, isa, cycles, pixels * channels * 64 / cycles))
    print(f"{'CPU model':<13} {'path':<7} {'cycles/step':>11} {'bits/cycle':>10}")
    for cpu, isa, cycles, bits in sorted(rows):
        print(f"{cpu:<13} {isa:<7} {cycles:>11.1f} {bits:>10.1f}")
    for cpu in CPUS:
        neon, scalar = (next(r[3] for r in rows if r[0] == cpu and r[1] == isa) for isa in ("neon", "scalar"))
        print(f"{cpu}: neon / scalar = {neon / scalar:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
