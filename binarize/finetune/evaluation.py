"""Passes over a whole loader with the weights fixed: accuracy, and RBCN's BatchNorm refresh."""
from __future__ import annotations

from typing import Dict, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..batchnorm import recompute_running_stats
from .distributed import all_reduce_sum, world


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: Union[str, torch.device, None] = None,
             progress: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Cross-entropy and top-1 accuracy of ``model`` on ``loader`` (eval mode; training mode restored)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        count += len(labels)
    model.train(was_training)
    return {"loss": loss_sum / max(count, 1), "acc": correct / max(count, 1)}


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, loader: DataLoader, device: Union[str, torch.device, None] = None) -> None:
    """RBCN's BN update ("the batch normalization (BN) layers are updated with W and C fixed after
    each epoch", section 2): recompute every BatchNorm's running statistics over ``loader`` (batches
    of ``(images, labels)``) in training mode with the weights fixed, as the plain average of the
    batches' statistics (momentum None), then average them over ranks. ``device``: the model's
    (of its first parameter) unless given. ``FinetuneConfig.bn_refresh_mode="affine"`` also trains the
    BatchNorm weights and biases first (the trainer's pass).

    Also the last step of a training loop of your own, over the whole training set: a converted
    model already recomputes its statistics from its last few hundred training samples before it
    next runs in eval mode (``ConvertConfig.batchnorm_refresh_samples``, :mod:`binarize.batchnorm`),
    which measured within about a point of this pass (``benchmarks/user_loop.py``)."""
    device = device or next(model.parameters()).device
    batches = (((images.to(device),), {}, len(images)) for images, _ in loader)
    size = world()[1]
    for m in recompute_running_stats(model, batches, weigh_by_samples=False):
        for stat in (m.running_mean, m.running_var):
            all_reduce_sum(stat)
            stat /= size
