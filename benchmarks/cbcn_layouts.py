"""CBCN's two layouts side by side (issue 10): short runs of LeNet and ResNet-8 on the bundled
MNIST-5k(-rot), xnor against CBCN "max" and "widen" at K = 1, 2, 4, with the report's own training
functions (benchmarks/report_accuracy.py: teacher, then KD + discriminator fine-tuning) and cache.

    OMP_NUM_THREADS=1 python benchmarks/cbcn_layouts.py --student-epochs 5 --seeds 0 1

Prints one line per run and, at the end, the accuracy table and the claims the report checks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report_accuracy as acc  # noqa: E402

XNOR = acc.Variant("xnor", "xnor")
VARIANTS = (XNOR, *acc.CBCN_LAYOUTS)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=["lenet", "resnet8"])
    parser.add_argument("--datasets", nargs="+", default=["mnist5k-rot"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--student-epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--ablations", action="store_true", help="also the widen K=4 ablations (LeNet, MNIST-rot)")
    parser.add_argument("--cache", type=Path, default=Path("runs/cbcn-layouts"))
    args = parser.parse_args(argv)
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
