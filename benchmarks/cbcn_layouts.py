"""CBCN's two layouts side by side (issue 10): short runs of LeNet and ResNet-8 on the bundled
MNIST-5k(-rot), xnor against CBCN "max" and "widen" at K = 1, 2, 4, with the report's own training
functions (benchmarks/report_accuracy.py: teacher, then KD + discriminator fine-tuning) and cache.

    OMP_NUM_THREADS=1 python benchmarks/cbcn_layouts.py --student-epochs 5 --seeds 0 1
    OMP_NUM_THREADS=1 python benchmarks/cbcn_layouts.py --cost   # MACs, memory, file size, ORT latency

Prints one line per run and, at the end, the accuracy table; ``--cost`` instead prints what each
layout costs: binarize.summary's MACs and memory, the exported file's size and ONNX Runtime's latency
(one thread, median of repeated runs, every model timed in the same process, side by side).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import binarize  # noqa: E402
import report_accuracy as acc  # noqa: E402
from binarize.runtime import session  # noqa: E402

XNOR = acc.Variant("xnor", "xnor")
VARIANTS = (XNOR, *acc.CBCN_LAYOUTS)


COST_ROWS = (("xnor", "xnor", {"double_skip": True}),
             *((f"cbcn max K={k}", "cbcn", {"orientations": k, "layout": "max"}) for k in (1, 2, 4)),
             *((f"cbcn widen K={k}", "cbcn", {"orientations": k, "layout": "widen"}) for k in (1, 2, 4)))


def latency_ms(path: Path, x: torch.Tensor, repeats: int = 50) -> float:
    run = session(str(path), threads=1)
    name = run.get_inputs()[0].name
    feed = {name: x.numpy()}
    for _ in range(5):
        run.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run.run(None, feed)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cost_table(batch: int = 1) -> None:
    torch.set_num_threads(1)
    print(f"| net | layout | binary MACs | x xnor | float MACs | memory (Mbit) | ONNX file (kB) | "
          f"ORT latency, batch {batch} (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for net, (build, side) in acc.NETS.items():
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(batch, 1, side, side)
        base = None
        with tempfile.TemporaryDirectory() as folder:
            for label, method, options in COST_ROWS:
                bnn = binarize.convert(model, method, **options).eval()
                summary = binarize.summary(bnn, (1, 1, side, side))
                base = base or summary.binary_macs
                path = binarize.export(bnn, Path(folder) / f"{label.replace(' ', '-')}.onnx", x)
                print(f"| {net} | {label} | {summary.binary_macs:,} | {summary.binary_macs / base:.0f} | "
                      f"{summary.float_macs:,} | {summary.memory_bits / 1e6:.3f} | {path.stat().st_size / 1e3:.0f} | "
                      f"{latency_ms(path, x):.3f} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=["lenet", "resnet8"])
    parser.add_argument("--datasets", nargs="+", default=["mnist5k-rot"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--ablations", action="store_true", help="also the widen K=4 ablations (LeNet, MNIST-rot)")
    parser.add_argument("--cache", type=Path, default=Path("runs/cbcn-layouts"))
    parser.add_argument("--cost", action="store_true", help="only the cost table (no training)")
    parser.add_argument("--batch", type=int, default=1, help="--cost: the batch ONNX Runtime is timed with")
    args = parser.parse_args(argv)
    if args.cost:
        cost_table(args.batch)
        return
    recipe = acc.Recipe(teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs)
    cache = args.cache / recipe.tag()
    results = []
    for seed in args.seeds:
        for net in args.nets:
            for data in args.datasets:
                grid = acc.Grid(nets=(net,), datasets=(data,), seeds=(seed,), methods=VARIANTS,
                                ablations=acc.CBCN_LAYOUT_ABLATIONS if args.ablations else (),
                                ablation_net="lenet", ablation_data="mnist5k-rot", recipe=recipe)
                results += acc.run_grid(grid, cache, workers=1, log=lambda line: print(line, flush=True))
    cells = acc.aggregate(results)
    for (net, data, label), cell in sorted(cells.items()):
        print(f"{net:8} {data:12} {label:28} {cell}  (n={len(cell.accs)})")


if __name__ == "__main__":
    main()
