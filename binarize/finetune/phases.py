"""Phases (spans of epochs with their own optimizers: BiPer's stages) and the learning-rate schedule.

The student's method plans the phases (:meth:`binarize.methods.TrainingPolicy.training_phases`);
each phase runs a linear warm-up then the configured shape over its own steps: a cosine decay
(BiPer), a step decay every so many epochs (CBCN on CIFAR and ImageNet) or a constant rate (CBCN's LeNet)."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from ..methods import Phase

__all__ = ["Phase", "cosine_lr", "step_lr", "Schedule"]


def warmup_lr(step: int, warmup_steps: int, base_lr: float) -> float:
    """The linear warm-up: ``base_lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps."""
    return base_lr * (step + 1) / warmup_steps


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay from ``base_lr`` to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return warmup_lr(step, warmup_steps, base_lr)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def step_lr(epoch: int, base_lr: float, decay: float, every: int) -> float:
    """``base_lr`` times ``decay`` for every ``every`` epochs completed (CBCN: "a degradation of 10% for
    every 60 epochs"); ``epoch`` counts from the phase's start."""
    return base_lr * decay ** (epoch // every)


class Schedule:
    """Where an epoch falls among the phases, and the learning rate of every step. ``config`` is the
    run's :class:`~binarize.FinetuneConfig` (its warm-up, schedule shape and their parameters)."""

    def __init__(self, phases: Sequence[Phase], config):
        self.phases, self.config = list(phases), config

    def lr(self, base_lr: float, position: int, total: int, steps_per_epoch: int) -> float:
        """The learning rate at step ``position`` of a phase of ``total`` steps, from ``base_lr``."""
        config = self.config
        warmup = round(config.warmup_epochs * steps_per_epoch)
        if config.schedule == "cosine":
            return cosine_lr(position, total, base_lr, warmup, min(config.min_lr, base_lr))
        if position < warmup:
            return warmup_lr(position, warmup, base_lr)
        if config.schedule == "step":
            return step_lr(position // steps_per_epoch, base_lr, config.lr_decay, config.lr_decay_every)
        return base_lr

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase_of(self, epoch: int) -> int:
        end = 0
        for index, phase in enumerate(self.phases):
            end += phase.epochs
            if epoch < end:
                return index
        return len(self.phases) - 1

    def phase_start(self, index: int) -> int:
        return sum(p.epochs for p in self.phases[:index])

    def set_lr(self, optimizers: Dict[str, torch.optim.Optimizer], index: int, epoch: int, step: int,
               steps_per_epoch: int) -> None:
        """Set every group's ``lr`` from its ``base_lr`` for ``step`` of ``epoch`` in phase ``index``."""
        total = self.phases[index].epochs * steps_per_epoch
        position = (epoch - self.phase_start(index)) * steps_per_epoch + step
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.lr(group["base_lr"], position, total, steps_per_epoch)

    def state_dict(self) -> List[Dict]:
        return [{"name": p.name, "epochs": p.epochs, "lr": p.lr, "stage": p.stage} for p in self.phases]

    def load_state_dict(self, state: List[Dict]) -> None:
        self.phases = [Phase(**p) for p in state]
