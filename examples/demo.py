"""The end-to-end demo: float teacher -> binary student -> fine-tuned -> ONNX -> bundled kernels.

    python examples/demo.py                  # BiPer on the bundled MNIST-5k, a few minutes on 2 cores
    python examples/demo.py --method rbcn --data mnist5k-rot

1. train a small float ResNet (``binarize.models.resnet_small``) on the bundled data, or load it from
   the cache (``runs/demo/``, written atomically; delete it to retrain);
2. convert it (first conv, 1x1 shortcuts and classifier stay float);
3. fine-tune the student against the frozen teacher with the default recipe: cross-entropy + KD (+ the
   method's own losses), Adam, the two-step schedule (binary activations with real weights, then binary
   weights);
4. export both to ONNX and run them with ONNX Runtime + binarize's XNOR-popcount kernels;
5. print one table: accuracy, ONNX size and latency, float vs binary.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import binarize
from binarize import checkpoint as ckpt
from binarize.cli import bench_onnx
from binarize.datasets import make_loaders
from binarize.finetune import FinetuneConfig, evaluate, finetune
from binarize.models import resnet_small
from binarize.runtime import session

#: The teacher's training recipe (Adam reaches ~97% on MNIST-5k in 4 epochs).
TEACHER = dict(optimizer="adam", lr=3e-3, epochs=4, warmup_epochs=0.3, weight_decay=1e-4)
#: The student's: FinetuneConfig's defaults, 3 epochs per stage of the two-step schedule (6 in all).
STUDENT_EPOCHS = 3


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="biper", choices=sorted(binarize.METHODS), help="binarization method (default biper)")
    parser.add_argument("--data", default="mnist5k", choices=("mnist5k", "mnist5k-rot"), help="bundled dataset (default mnist5k)")
    parser.add_argument("--cache", default="runs/demo", help="folder for the cached teacher and the run (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=STUDENT_EPOCHS,
                        help=f"FinetuneConfig(epochs=...): epochs per stage (default {STUDENT_EPOCHS})")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for training and inference (default 1: steady on a busy or small machine)")
    return parser.parse_args()


def train_or_load_teacher(path: Path, train_loader, test_loader) -> torch.nn.Module:
    torch.manual_seed(0)
    teacher = resnet_small(num_classes=10, in_channels=1)
    if path.is_file():
        ckpt.load_float_weights(teacher, path)
        print(f"[1/5] float teacher: loaded the cached {path}")
        return teacher.eval()
    print(f"[1/5] float teacher: training (cached afterwards in {path})")
    teacher, _ = finetune(teacher, None, train_loader, test_loader,
                          FinetuneConfig(evaluate_initial=False, **TEACHER))
    ckpt.atomic_save(teacher.state_dict(), path)
    return teacher.eval()


def onnx_accuracy(path: Path, test_loader, threads: int) -> float:
    sess = session(str(path), threads=threads)
    name = sess.get_inputs()[0].name
    correct = total = 0
    for images, labels in test_loader:
        logits = sess.run(None, {name: images.numpy()})[0]
        correct += int((np.argmax(logits, 1) == labels.numpy()).sum())
        total += len(labels)
    return correct / total


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    train_loader, test_loader, info = make_loaders(args.data, batch_size=64, test_batch_size=250)
    teacher = train_or_load_teacher(cache / f"teacher-{args.data}.pt", train_loader, test_loader)

    student = binarize.convert(teacher, args.method)
    plan = student.binarize_plan
    print(f"[2/5] converted with {args.method}: {len(plan.binary)} binary layers "
          f"(first conv, 1x1 shortcuts and classifier stay float)")

    print("[3/5] fine-tuning against the teacher (the default recipe: CE + KD, two steps)")
    recipe = ckpt.make_recipe("binarize.models:resnet_small", student.binarize_config,
                              cache / f"teacher-{args.data}.pt", num_classes=10, in_channels=1)
    recipe["data"] = {"name": args.data, "data_dir": None, "batch_size": 64, "image_size": info.image_size,
                      "channels": info.in_channels, "num_workers": 0, "seed": 0}
    student, history = finetune(student, teacher, train_loader, test_loader,
                                FinetuneConfig(epochs=args.epochs, run_dir=str(cache / args.method), recipe=recipe))

    print("[4/5] exporting ONNX and running it with ONNX Runtime + binarize kernels")
    example = torch.zeros(1, info.in_channels, info.image_size, info.image_size)
    float_onnx = binarize.export(teacher, cache / "float.onnx", example)
    binary_onnx = binarize.export(student, cache / f"{args.method}.onnx", example)
    rows = {}
    for label, model, path in (("float", teacher, float_onnx), (f"binary ({args.method})", student, binary_onnx)):
        rows[label] = {"torch_acc": evaluate(model, test_loader)["acc"],
                       "ort_acc": onnx_accuracy(path, test_loader, args.threads)}

    print("[5/5] timing batch-1 inference")
    for label, path in zip(rows, (float_onnx, binary_onnx)):
        rows[label].update(bench_onnx(str(path), threads=args.threads, batch=1, runs=200, warmup=20))

    float_row, binary_row = rows.values()
    print()
    print(f"{info.name}, {info.num_train} train / {info.num_test} test images, ResNet-small (16-32-64)")
    print(f"{'':28}{'float':>12}{'binary (' + args.method + ')':>18}{'ratio':>10}")
    print(f"{'test accuracy (PyTorch)':28}{float_row['torch_acc']:>12.2%}{binary_row['torch_acc']:>18.2%}")
    print(f"{'test accuracy (ONNX Runtime)':28}{float_row['ort_acc']:>12.2%}{binary_row['ort_acc']:>18.2%}")
    print(f"{'ONNX file size (KiB)':28}{float_row['size_kib']:>12.1f}{binary_row['size_kib']:>18.1f}"
          f"{float_row['size_kib'] / binary_row['size_kib']:>9.1f}x")
    print(f"{'latency, batch 1 (ms)':28}{float_row['median_ms']:>12.3f}{binary_row['median_ms']:>18.3f}"
          f"{float_row['median_ms'] / binary_row['median_ms']:>9.2f}x")
    print(f"(student before fine-tuning: {history.initial.get('student_val_acc', float('nan')):.2%}; "
          f"{args.threads} thread(s); total {time.time() - start:.0f} s; run files in {cache})")


if __name__ == "__main__":
    main()
