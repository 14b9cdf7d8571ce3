"""One student run of the evidence report's setting with chosen conversion and fine-tuning options,
printed as one JSON line: the quick single-seed screen of the accuracy levers (benchmarks/RESULTS.md,
"Accuracy levers") before the report measures the chosen ones over seeds.

    python benchmarks/lever_screen.py NET DATA METHOD SEED '{convert options}' '{FinetuneConfig fields}'
    python benchmarks/lever_screen.py lenet mnist5k xnor 0 '{"rprelu": false}' '{"epochs": 8}'

The teacher is the report's (``report_accuracy.train_teacher``), cached under ``runs/lever_screen``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import binarize  # noqa: E402
import report_accuracy as acc  # noqa: E402
from binarize.finetune import FinetuneConfig, finetune  # noqa: E402


def main(argv):
    net, data, method, seed = argv[0], argv[1], argv[2], int(argv[3])
    convert_options = json.loads(argv[4]) if len(argv) > 4 else {}
    finetune_options = json.loads(argv[5]) if len(argv) > 5 else {}
    torch.set_num_threads(1)
    cache = Path(__file__).resolve().parent.parent / "runs" / "lever_screen"
    teacher_run = acc.train_teacher(cache, net, data, seed, acc.Recipe())
    train_loader, test_loader, _ = acc._loaders(net, data, seed)
    teacher = acc.load_teacher(cache, net, data, seed)
    torch.manual_seed(seed)
    student = binarize.convert(teacher, method, **convert_options)
    start = time.time()
    _, history = finetune(student, teacher, train_loader, test_loader,
                          FinetuneConfig(**finetune_options, seed=seed, progress=False))
    curve = [round(100 * row["val_acc"], 1) for row in history.epochs]
    print(json.dumps({"net": net, "data": data, "method": method, "seed": seed, "convert": convert_options,
                      "finetune": finetune_options, "teacher": round(100 * teacher_run["acc"], 1),
                      "acc": curve[-1], "curve": curve, "batchnorm_check": history.batchnorm_check,
                      "train_s": round(time.time() - start)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
