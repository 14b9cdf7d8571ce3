"""Accuracy effect of ``binarize.export(..., calibration=...)`` (the float convs in int8) on a trained student.

A float ResNet-8 (``resnet_small(blocks=(1, 1, 1))``) is trained on the bundled MNIST-5k, converted
with ``--method`` and fine-tuned; the student is exported twice, without and with calibration (the
first ``--calibration-batches`` training batches), and both files are evaluated in ONNX Runtime on
the validation split: accuracy of each and the share of images whose top-1 agrees. One thread.

    python benchmarks/int8_accuracy.py [--method bireal] [--epochs 3]
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np
import torch

import binarize
from binarize.datasets import make_loaders
from binarize.models import resnet_small
from binarize.runtime import session
from user_loop import train as plain_adam_loop  # benchmarks/ is on sys.path when this script runs


def predictions(path: Path, loader) -> tuple:
    runner = session(path, threads=1)
    name = runner.get_inputs()[0].name
    predicted, labels = [], []
    for images, target in loader:
        predicted.append(runner.run(None, {name: images.numpy()})[0].argmax(1))
        labels.append(target.numpy())
    return np.concatenate(predicted), np.concatenate(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="bireal")
    parser.add_argument("--epochs", type=int, default=3, help="teacher epochs, then as many student epochs")
    parser.add_argument("--calibration-batches", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, val, _ = make_loaders("mnist5k", batch_size=64, seed=0)
    teacher = resnet_small(blocks=(1, 1, 1))
    plain_adam_loop(teacher, train, args.epochs, lr=3e-3)
    student = binarize.convert(teacher.eval(), args.method)
    config = binarize.FinetuneConfig(epochs=args.epochs, stage1_epochs=0 if args.method != "biper" else None,
                                     optimizer="adam", lr=2e-3, weight_decay=0.0, gan_weight=0.0, progress=False)
    student, _ = binarize.finetune(student, teacher, train, val, config)
    example = next(iter(val))[0][:1]
    calibration = [images for images, _ in itertools.islice(train, args.calibration_batches)]
    with tempfile.TemporaryDirectory() as tmp:
        plain = binarize.export(student, Path(tmp) / "float.onnx", example)
        int8 = binarize.export(student, Path(tmp) / "int8.onnx", example, calibration=calibration)
        (p_float, labels), (p_int8, _) = predictions(plain, val), predictions(int8, val)
        sizes = plain.stat().st_size, int8.stat().st_size
    print(f"ResNet-8 MNIST-5k, {args.method}, {args.epochs}+{args.epochs} epochs, {len(labels)} validation images")
    print(f"float layers float32: accuracy {np.mean(p_float == labels):.2%}, file {sizes[0] / 1e3:.0f} kB")
    print(f"float layers int8:    accuracy {np.mean(p_int8 == labels):.2%}, file {sizes[1] / 1e3:.0f} kB")
    print(f"top-1 agreement: {np.mean(p_float == p_int8):.2%}")


if __name__ == "__main__":
    main()
