"""A tiny fine-tuning run in its own process, for tests/test_finetune.py: resumed after SIGKILL,
interrupted by SIGINT, or launched by torchrun for the DDP-equivalence test.

    python tests/finetune_worker.py '{"run_dir": ..., "kill_at_fetch": 40}'
    torchrun --nproc_per_node=2 tests/finetune_worker.py '{"run_dir": ..., "distributed": true}'

Options (JSON): run_dir; method ("biper"); batch_norm (true); batch_size (global, 16);
convert: conversion overrides; distributed (false: a shuffled DataLoader with a seeded generator); kill_at_fetch / sigint_at_fetch:
send SIGKILL / SIGINT to this process when the dataset is asked for its N-th sample; resume;
finetune: FinetuneConfig overrides; dump_rng: after training, write this process's torch random state
to RUN_DIR/<dump_rng>-rank<RANK>.pt.
"""
import json
import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import binarize
from binarize.datasets import make_loaders
from binarize.finetune import FinetuneConfig, TrainingInterrupted, finetune, init_distributed


class SignalAtFetch(Dataset):
    """The wrapped dataset, sending ``signum`` to this process when sample number ``at`` is fetched."""

    def __init__(self, dataset, at, signum):
        self.dataset, self.at, self.signum, self.fetched = dataset, at, signum, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.fetched += 1
        if self.fetched == self.at:
            os.kill(os.getpid(), self.signum)
        return self.dataset[index]


def tiny_model(batch_norm: bool) -> nn.Module:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)] + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.ReLU()]

    return nn.Sequential(*block(1, 8, 2), *block(8, 16, 2), *block(16, 16, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def freeze_broken_batchnorm(model: nn.Module) -> None:
    """Running statistics that describe nothing the model computes (every variance x 10^4, every mean
    + 1), frozen there (momentum 0): what a run whose averages went stale looks like, exaggerated."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.mul_(1e4)
            m.running_mean.add_(1.0)
            m.momentum = 0.0


def main(options):
    torch.set_num_threads(1)
    rank, world = init_distributed()
    torch.manual_seed(0)
    teacher = tiny_model(options.get("batch_norm", True))
    student = binarize.convert(teacher, options.get("method", "biper"), **options.get("convert", {}))
    if options.get("freeze_broken_batchnorm"):
        freeze_broken_batchnorm(student)
    batch = options.get("batch_size", 16) // world
    train_loader, val_loader, _ = make_loaders("mnist5k", batch_size=batch, test_batch_size=500,
                                               distributed=options.get("distributed", False))
    for key, signum in (("kill_at_fetch", signal.SIGKILL), ("sigint_at_fetch", signal.SIGINT)):
        if key in options:
            dataset = SignalAtFetch(train_loader.dataset, options[key], signum)
            train_loader = DataLoader(dataset, batch_size=batch, shuffle=True,
                                      generator=torch.Generator().manual_seed(0))
    config = FinetuneConfig(run_dir=options["run_dir"], resume=options.get("resume"), progress=False,
                            evaluate_initial=False, deterministic=True, **options.get("finetune", {}))
    try:
        finetune(student, teacher, train_loader, val_loader, config)
    except TrainingInterrupted as stop:
        print(stop)
        return 130
    if "dump_statistics" in options:
        torch.save({k: v for k, v in student.state_dict().items() if "running" in k},
                   os.path.join(options["run_dir"], f"{options['dump_statistics']}-rank{rank}.pt"))
    if "dump_rng" in options:
        torch.save(torch.get_rng_state(), os.path.join(options["run_dir"], f"{options['dump_rng']}-rank{rank}.pt"))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
