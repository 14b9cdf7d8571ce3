"""Issue 9's "new user" check: a small float ResNet written the way users write one (``F.relu`` in
``forward``, not ``nn.ReLU`` modules), trained with a plain loop, converted with
``binarize.convert(model, method)`` (every option at its default), then trained again by the same
plain loop: Adam (PyTorch's defaults, lr 1e-3), cross-entropy only, no teacher, no binarize training
code. Prints the test error of the float net and of every method, on MNIST-5k-rot, as the loop leaves
the model (a converted model recomputes its BatchNorm statistics from its last 512 training samples
when it is first evaluated, ``ConvertConfig.batchnorm_refresh_samples``) and after one more line in
the loop, ``binarize.finetune.refresh_batchnorm(model, train_loader)`` (statistics recomputed over the
whole training set with the weights fixed).

    OMP_NUM_THREADS=1 python benchmarks/user_loop.py [--epochs 6] [--seeds 0 1 2] [--results benchmarks/RESULTS.md]
"""
from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import binarize
from binarize.datasets import make_loaders
from binarize.finetune import evaluate, refresh_batchnorm

METHODS = ("xnor", "bireal", "biper", "cbcn", "rbcn")


class Block(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.down = None
        if stride != 1 or channels_in != channels:
            self.down = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class UserResNet(nn.Module):
    """Stem, three stages of one basic block (16-32-64 channels), global pooling, a linear classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.stages = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stages(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def train(model: nn.Module, loader, epochs: int, lr: float = 1e-3) -> None:
    """The plain loop: Adam (PyTorch's default lr unless given), cross-entropy, nothing else."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()


def test_error(model: nn.Module, loader) -> float:
    return 1.0 - evaluate(model, loader)["acc"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", default="mnist5k-rot")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--results", type=Path, help="append the table as Markdown to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    errors = {name: [] for name in ("float", *args.methods)}
    refreshed = {name: [] for name in errors}  # the same models after refresh_batchnorm
    for seed in args.seeds:
        train_loader, test_loader, _ = make_loaders(args.data, batch_size=128, test_batch_size=500, seed=seed)
        torch.manual_seed(seed)
        model = UserResNet()
        train(model, train_loader, args.epochs)
        for name in ("float", *args.methods):
            start = time.time()
            if name != "float":
                torch.manual_seed(seed)
                student = binarize.convert(model, name)
                train(student, train_loader, args.epochs)
            # A copy of the float net: the students are converted from it as the loop left it.
            trained = copy.deepcopy(model) if name == "float" else student
            errors[name].append(test_error(trained, test_loader))
            refresh_batchnorm(trained, train_loader)
            refreshed[name].append(test_error(trained, test_loader))
            print(f"seed {seed} {name}: {errors[name][-1]:.1%} test error, {refreshed[name][-1]:.1%} after "
                  f"refresh_batchnorm ({time.time() - start:.0f} s)", flush=True)

    def cell(values):
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"

    rows = ["| model | test error, % (mean ± std over seeds) | after refresh_batchnorm | target |",
            "|---|---|---|---|"]
    for name in errors:
        rows.append(f"| {name} | {cell(errors[name])} | {cell(refreshed[name])} | {'' if name == 'float' else '< 15'} |")
    print("\n".join(rows))
    if args.results:
        command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in sys.argv)
        text = ["", f"## A user's own loop ({args.data}, {args.epochs} epochs, seeds {args.seeds})", "",
                "A float ResNet written with `F.relu`, `binarize.convert(model, method)` with every default, "
                "then Adam (lr 1e-3) and cross-entropy only, in the user's own loop. Command:", "",
                f"    {command}", "", *rows, ""]
        with open(args.results, "a") as results:
            results.write("\n".join(text))


if __name__ == "__main__":
    main()
