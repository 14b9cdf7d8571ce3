"""Phases (spans of epochs with their own optimizers: BiPer's stages) and the learning-rate schedule.

The student's method plans the phases (:meth:`binarize.methods.TrainingPolicy.training_phases`);
each phase runs a linear warm-up then a cosine decay over its own steps."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from ..methods import Phase

__all__ = ["Phase", "cosine_lr", "Schedule"]


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup_steps`` then cosine decay from ``base_lr`` to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class Schedule:
    """Where an epoch falls among the phases, and the learning rate of every step."""

    def __init__(self, phases: Sequence[Phase], warmup_epochs: float, min_lr: float):
        self.phases, self.warmup_epochs, self.min_lr = list(phases), warmup_epochs, min_lr

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
        warmup = round(self.warmup_epochs * steps_per_epoch)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(position, total, group["base_lr"], warmup, min(self.min_lr, group["base_lr"]))

    def state_dict(self) -> List[Dict]:
        return [{"name": p.name, "epochs": p.epochs, "lr": p.lr, "stage": p.stage} for p in self.phases]

    def load_state_dict(self, state: List[Dict]) -> None:
        self.phases = [Phase(**p) for p in state]
