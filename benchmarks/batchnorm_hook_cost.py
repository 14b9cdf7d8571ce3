"""What ``ConvertConfig.batchnorm_refresh_samples`` costs a user's own loop at ImageNet scale: the
memory its references to recent inputs hold, and the time of the first eval-mode call after training
(which recomputes the BatchNorm statistics from those inputs) against a training step and against an
eval-mode call with the statistics up to date. A torchvision model at random initialisation, random
224x224 images, converted with every default, trained by a plain Adam/cross-entropy step.

    OMP_NUM_THREADS=1 python benchmarks/batchnorm_hook_cost.py [--model resnet18] [--method biper] [--batch 32] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision

import binarize
from binarize.batchnorm import recorder_of


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision.models constructor (default resnet18)")
    parser.add_argument("--method", default="biper")
    parser.add_argument("--batch", type=int, default=32, help="training batch size (default 32)")
    parser.add_argument("--samples", type=int, default=512, help="batchnorm_refresh_samples (default 512)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="train-then-evaluate rounds, medians reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = binarize.convert(getattr(torchvision.models, args.model)(num_classes=1000), args.method,
                             batchnorm_refresh_samples=args.samples)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_to_fill = -(-args.samples // args.batch) + 1  # the recorder holds >= samples plus one batch
    probe = torch.randn(args.batch, 3, 224, 224)

    step_times, first_eval, settled_eval = [], [], []
    for _ in range(args.rounds):
        model.train()
        for _ in range(steps_to_fill):
            images, labels = torch.randn(args.batch, 3, 224, 224), torch.randint(0, 1000, (args.batch,))
            start = time.perf_counter()
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            step_times.append(time.perf_counter() - start)
        recorded = recorder_of(model).batches
        held = sum(t.numel() * t.element_size() for batch_args, _, _ in recorded for t in batch_args)
        held_samples = sum(count for *_, count in recorded)
        model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            model(probe)  # recomputes the statistics first
            first_eval.append(time.perf_counter() - start)
            start = time.perf_counter()
            model(probe)
            settled_eval.append(time.perf_counter() - start)

    step, first, settled = (statistics.median(v) for v in (step_times, first_eval, settled_eval))
    recompute = first - settled
    print(f"{args.model} ({args.method}), batch {args.batch}, {args.threads} thread(s), "
          f"batchnorm_refresh_samples={args.samples}; medians of {args.rounds} rounds of {steps_to_fill} steps")
    print(f"inputs held by the hook:        {held / 2**20:.0f} MiB ({held_samples} images)")
    print(f"training step:                  {step:.2f} s")
    print(f"eval call, statistics current:  {settled:.2f} s")
    print(f"first eval call after training: {first:.2f} s (recompute {recompute:.2f} s = "
          f"{recompute / step:.1f} training steps)")


if __name__ == "__main__":
    main()
