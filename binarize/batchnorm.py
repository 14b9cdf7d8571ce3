"""BatchNorm running statistics that describe the weights a binary model has now.

While a binary network trains, its latent weights keep crossing zero, so every optimizer step flips
some weight signs. PyTorch's running statistics (an average over the last batches, momentum 0.1)
then describe weights the model no longer has, and as a plain training loop leaves the model its
eval-mode accuracy is far below its train-mode accuracy and swings from epoch to epoch
(``benchmarks/user_loop.py``, MNIST-5k-rot, mean of 3 seeds per method: 24-64 % test error with
PyTorch's averages, 13-22 % with the statistics recomputed from the last 512 training samples;
benchmarks/RESULTS.md "BatchNorm statistics at eval()").

:func:`binarize.convert` therefore installs :class:`RecentInputs` on the model it returns
(``ConvertConfig.batchnorm_refresh_samples``): the model keeps references to its last training
inputs, and before it next runs in eval mode, or hands out its ``state_dict``, it recomputes every
BatchNorm's statistics from them with the current weights (:func:`recompute_running_stats`).
Measured, a few hundred samples give what the whole training set gives.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

#: One forward call's inputs: (args, kwargs, number of samples).
Batch = Tuple[tuple, Dict[str, Any], int]


def batch_size(args: tuple, kwargs: Dict[str, Any]) -> int:
    """The leading dimension of the first tensor argument (1 when there is none)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return 1


def tracking_norms(model: nn.Module) -> List[_BatchNorm]:
    """The BatchNorms of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_running_stats(model: nn.Module, batches: Iterable[Batch], weigh_by_samples: bool = True) -> List[_BatchNorm]:
    """Reset every tracking BatchNorm of ``model`` and run ``model`` in training mode over ``batches``
    with the weights fixed, so that the running statistics become the average of the batches'
    statistics: weighted by each batch's sample count, or with ``weigh_by_samples=False`` one plain
    average over batches (PyTorch's momentum None; RBCN's refresh). Momenta and the training flag are
    restored. Returns those BatchNorms (none, and nothing run, when the model has none)."""
    norms = tracking_norms(model)
    if not norms:
        return norms
    recorder = recorder_of(model)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    try:
        if recorder is not None:
            recorder.running = True  # these training-mode calls are not the user's training
        for args, kwargs, count in batches:
            if weigh_by_samples:  # the running average moves by this batch's share of the samples so far
                seen += count
                for m in norms:
                    m.momentum = count / seen
            model(*args, **kwargs)
    finally:
        model.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        if recorder is not None:
            recorder.running = False
    if recorder is not None:
        recorder.stale = False
    return norms


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _moved(batch: Batch, like: torch.Tensor) -> Batch:
    """``batch`` on ``like``'s device, its floating-point tensors in ``like``'s dtype."""
    def move(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return value.to(device=like.device, dtype=like.dtype if value.is_floating_point() else value.dtype)

    args, kwargs, count = batch
    return tuple(map(move, args)), {k: move(v) for k, v in kwargs.items()}, count


class RecentInputs:
    """The forward pre-hook behind ``ConvertConfig.batchnorm_refresh_samples``.

    In training mode it keeps references to the model's inputs (detached, not copied) from the last
    calls that add up to at least ``samples`` samples, and marks the running statistics stale. The
    first eval-mode call after that, and a ``state_dict()`` while stale, first recompute the
    statistics from those inputs (:func:`recompute_running_stats`, weighted by sample count, so a
    small last batch of an epoch counts for its size), under a forked random state, so a model with
    dropout leaves the caller's random stream as it was, and on the model's device and float dtype
    (a model moved to the CPU after training on a GPU). Loading a state_dict clears the mark: the
    loaded statistics describe the loaded weights.

    The inputs are the training batches the user's loop passed in, so they must not be changed in
    place afterwards; the hook holds at most ``samples`` samples plus one batch. Under
    ``torch.compile`` it runs outside the compiled graph (one graph break in front of the forward
    pass; ``fullgraph=True`` refuses it, with a message naming the fix); ``torch.jit.trace`` and
    ``torch.export`` calls are neither recorded nor trigger a recompute."""

    def __init__(self, samples: int, batches: Iterable[Batch] = (), stale: bool = False):
        self.samples = samples
        self.batches: Deque[Batch] = collections.deque(batches)
        self.stale = stale
        self.paused = False
        self.handles: list = []  # set where the hooks are registered
        self.running = False  # inside recompute_running_stats: its calls are not training calls

    def __call__(self, model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> None:
        if self.paused or self.running or torch.jit.is_tracing() or torch.compiler.is_exporting():
            return  # tracers and exporters see the model, not a training loop
        if torch.compiler.is_compiling():
            # A model under torch.compile still trains or evaluates: record and recompute outside
            # the graph (one graph break in front of the forward pass).
            self._observe_eagerly(model, args, kwargs)
        else:
            self._observe(model, args, kwargs)

    def _observe(self, model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> None:
        if model.training:
            self.batches.append((tuple(map(_detached, args)), {k: _detached(v) for k, v in kwargs.items()},
                                 batch_size(args, kwargs)))
            while sum(count for *_, count in self.batches) - self.batches[0][2] >= self.samples:
                self.batches.popleft()
            self.stale = True
        else:
            self.settle(model)

    # torch.compile(fullgraph=True) refuses the graph break, and shows this reason.
    _observe_eagerly = torch.compiler.disable(_observe, reason=(
        "a converted model records its training inputs and recomputes its BatchNorm statistics outside the "
        "compiled graph (ConvertConfig.batchnorm_refresh_samples); for fullgraph=True, convert with "
        "batchnorm_refresh_samples=0 and call binarize.finetune.refresh_batchnorm(model, train_loader) "
        "before evaluating"))

    def settle(self, model: nn.Module) -> None:
        """Recompute the statistics now if training calls came since they were last computed."""
        if not self.stale or self.paused or self.running:
            return
        # The model may have moved since it trained (model.cpu() after training on a GPU, .double()).
        parameter = next(model.parameters(), None)
        batches = [_moved(batch, parameter) for batch in self.batches] if parameter is not None else self.batches
        devices = sorted({t.get_device() for args, kwargs, _ in batches
                          for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and t.is_cuda})
        with torch.random.fork_rng(devices=devices):
            recompute_running_stats(model, batches)

    def state_dict_pre_hook(self, model: nn.Module, prefix: str, keep_vars: bool) -> None:
        self.settle(model)

    def load_state_dict_post_hook(self, model: nn.Module, incompatible_keys) -> None:
        self.stale = False

    def __deepcopy__(self, memo) -> "RecentInputs":
        # A copy of the model shares the recorded inputs (they are never written to) and their mark.
        return RecentInputs(self.samples, self.batches, self.stale)

    def __getstate__(self) -> Dict[str, Any]:
        # Pickled with a model (torch.save of the module): the setting, not the user's data.
        return {"samples": self.samples}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["samples"])

    def __repr__(self) -> str:
        count = sum(count for *_, count in self.batches)
        return f"RecentInputs(samples={self.samples}, holding {count}, stale={self.stale})"


#: The attribute of a converted model that holds its hook (kept across ``copy.deepcopy``).
ATTRIBUTE = "binarize_recent_inputs"


def install(model: nn.Module, samples: int) -> Optional[RecentInputs]:
    """Give ``model`` (a ``torch.fx.GraphModule``) a :class:`RecentInputs` keeping ``samples``
    samples; nothing when it has no BatchNorm that tracks statistics or ``samples`` is 0."""
    if samples <= 0 or not tracking_norms(model):
        return None
    recorder = RecentInputs(samples)
    setattr(model, ATTRIBUTE, recorder)
    # GraphModule.__deepcopy__ restores attributes listed under this meta key but drops forward and
    # state_dict pre-hooks; the deepcopy hook registers the copy's own recorder on the copy.
    model.meta.setdefault("_user_preserved_attributes", {})[ATTRIBUTE] = recorder
    _register_hooks(model)
    model._register_deepcopy_hook(_register_hooks)
    return recorder


def _register_hooks(model: nn.Module) -> None:
    recorder = getattr(model, ATTRIBUTE)
    recorder.handles = [model.register_forward_pre_hook(recorder, with_kwargs=True),
                        model.register_state_dict_pre_hook(recorder.state_dict_pre_hook),
                        model.register_load_state_dict_post_hook(recorder.load_state_dict_post_hook)]


def recorder_of(model: nn.Module) -> Optional[RecentInputs]:
    recorder = getattr(model, ATTRIBUTE, None)
    return recorder if isinstance(recorder, RecentInputs) else None


def freeze(model: nn.Module) -> None:
    """Bring ``model``'s statistics up to date (what its next eval-mode call would do), then remove
    the hook: they stay as they are now (the exporter's copy of a model, which tracers run)."""
    recorder = recorder_of(model)
    if recorder is None:
        return
    recorder.settle(model)
    for handle in recorder.handles:
        handle.remove()
    delattr(model, ATTRIBUTE)
    model.meta.get("_user_preserved_attributes", {}).pop(ATTRIBUTE, None)
    if _register_hooks in getattr(model, "_deepcopy_hooks", []):
        model._unregister_deepcopy_hook(_register_hooks)


@contextlib.contextmanager
def paused(model: nn.Module) -> Iterator[None]:
    """Neither record nor recompute inside the block: for a trainer with a BatchNorm policy of its
    own (:func:`binarize.finetune`), whose recipes were measured without this hook."""
    recorder = recorder_of(model)
    if recorder is None:
        yield
        return
    before = recorder.paused
    recorder.paused = True
    try:
        yield
    finally:
        recorder.paused = before
