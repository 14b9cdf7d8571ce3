"""Passes over a whole loader with the weights fixed: accuracy, RBCN's BatchNorm refresh, and the
check of the BatchNorm statistics that ends a run."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..batchnorm import recompute_running_stats, tracking_norms
from .distributed import all_reduce_sum, world


def _eval_sums(model: nn.Module, loader: Iterable, device: Union[str, torch.device, None],
               progress: bool = False, desc: str = "eval") -> Tuple[float, int, int]:
    """Summed cross-entropy, correct top-1 and sample count over ``loader`` in eval mode (training
    mode restored)."""
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
    return loss_sum, correct, count


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: Union[str, torch.device, None] = None,
             progress: bool = False, desc: str = "eval") -> Dict[str, float]:
    """Cross-entropy and top-1 accuracy of ``model`` on ``loader`` (eval mode; training mode restored)."""
    loss_sum, correct, count = _eval_sums(model, loader, device, progress, desc)
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


#: How many accuracy points (as a fraction) statistics recomputed by :func:`check_batchnorm` must
#: gain on its check batches before they replace the running averages. Broken running averages
#: lost 5-34 points there in the runs measured, while gains of 1.2 and 2.8 points came with test
#: accuracy 1.2 and 0.2 points lower, and a refresh over the training set cost sound runs 0.4 points
#: on average (benchmarks/RESULTS.md, "The BatchNorm check that ends a run"): the running averages
#: stay unless they are clearly broken.
BATCHNORM_CHECK_MARGIN = 0.03
#: How many of the last epoch's samples ``FinetuneConfig.bn_final_check`` checks on (and as many
#: before them recompute the statistics): enough that the margin is more than a few images.
BATCHNORM_CHECK_SAMPLES = 1024


@torch.no_grad()
def check_batchnorm(model: nn.Module, check_batches: Iterable, refresh_batches: Iterable,
                    device: Union[str, torch.device, None] = None,
                    margin: float = BATCHNORM_CHECK_MARGIN) -> Optional[Dict[str, Any]]:
    """Keep PyTorch's running BatchNorm statistics unless statistics recomputed from
    ``refresh_batches`` (:func:`refresh_batchnorm`) classify ``check_batches`` (other training
    batches) better in eval mode by more than ``margin``; then keep the recomputed ones.

    Why: a binary network's eval-mode accuracy can hang on its BatchNorm statistics. Running
    averages gathered while latent weights flip can describe a network the model no longer is, and a
    last epoch that trained well can evaluate at 63 % where recomputed statistics give 94 %
    (benchmarks/RESULTS.md, "The BatchNorm check that ends a run"). Only training data is used, so a
    validation score stays a fair estimate. Counts are summed over ranks, so every rank decides the
    same. Returns the two accuracies, the check's sample count and ``kept``: "running" or
    "recomputed"; None for a model without BatchNorm running statistics."""
    device = device or next(model.parameters()).device

    def accuracy() -> Tuple[float, int]:
        _, correct, count = _eval_sums(model, check_batches, device)
        totals = torch.tensor([correct, count], dtype=torch.float64, device=device)
        all_reduce_sum(totals)
        return totals[0].item() / max(totals[1].item(), 1.0), int(totals[1].item())

    layers = tracking_norms(model)
    if not layers:
        return None
    running, samples = accuracy()
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    refresh_batchnorm(model, refresh_batches, device)
    recomputed, _ = accuracy()
    kept = "recomputed" if recomputed > running + margin else "running"
    if kept == "running":
        for m, state in zip(layers, saved):
            m.load_state_dict(state)
    return {"running_acc": running, "recomputed_acc": recomputed, "kept": kept, "check_samples": samples}
