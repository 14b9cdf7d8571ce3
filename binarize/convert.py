"""``binarize.convert``: the one entry point from a float model to a trainable binary one."""
from __future__ import annotations

import copy
from typing import Dict, Iterator, Tuple, Union

import torch
import torch.fx as fx
from torch import nn

from . import batchnorm, passes
from .config import ConvertConfig
from .layers import BinaryLayer
from .methods import get_method, method_for_config, training_policy


def convert(model: nn.Module, method: Union[str, ConvertConfig] = "biper", *, inplace: bool = False,
            **overrides) -> fx.GraphModule:
    """Return a binary version of ``model`` as a ``torch.fx.GraphModule``.

    ``method`` is a registered name (``"xnor"``, ``"bireal"``, ``"biper"``, ``"cbcn"``, ``"rbcn"``)
    or a method config (``BiPerConfig(omega=20)``); keyword ``overrides`` set config fields
    (``convert(model, "cbcn", orientations=8, keep_first=False)``).

    The result starts from ``model``'s weights and BatchNorm statistics; ``model`` itself is left
    untouched unless ``inplace=True`` (which skips the deep copy to save memory: the original's
    modules are then reused by the result and the original must not be used any more).
    ``result.binarize_plan`` lists the binary layers and why every other layer stayed float.
    Unless ``batchnorm_refresh_samples=0``, the result recomputes its BatchNorm statistics from its
    last training inputs before it next runs in eval mode (:mod:`binarize.batchnorm`).
    """
    if isinstance(method, ConvertConfig):
        config = method.with_overrides(**overrides) if overrides else method
        spec = method_for_config(config)
    elif isinstance(method, str):
        spec = get_method(method)
        config = spec.config().with_overrides(**overrides)
    else:
        raise TypeError(f"method must be a method name or a config, not {type(method).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")

    source = model if inplace else copy.deepcopy(model)
    gm = passes.trace(source, config.leaf_modules)
    passes.disable_inplace(gm)
    plan = passes.plan_binary_layers(gm, config)
    if not plan.binary:
        raise ValueError(f"convert: no layer of {type(model).__name__} can be binarized with these "
                         f"options; every Conv2d/Linear stays float:\n{plan}")
    if config.keep_costly_float:
        passes.keep_costly_layers_float(gm, plan, config)
    if not plan.binary:
        raise ValueError(f"convert: no layer of {type(model).__name__} is worth binarizing with these "
                         f"options (keep_costly_float=False binarizes them anyway):\n{plan}")
    if config.double_skip:
        passes.add_double_skips(gm, plan.binary, config.shortcut)
    passes.rewrite_sign_inputs(gm, plan.binary, config.activation)
    passes.swap_binary_layers(gm, plan.binary, spec, config)
    spec.rewrite_graph(gm, plan.binary, config)
    if config.rprelu:
        passes.add_rprelus(gm, plan.binary)
    gm.recompile()
    attributes = {"binarize_plan": plan, "binarize_config": config}
    # GraphModule.__deepcopy__ rebuilds the module from its graph and drops plain attributes;
    # it restores the ones listed under this ``meta`` key (torch.fx's own mechanism).
    gm.meta.setdefault("_user_preserved_attributes", {}).update(attributes)
    for name, value in attributes.items():
        setattr(gm, name, value)
    batchnorm.install(gm, config.batchnorm_refresh_samples)
    return gm


def binary_layers(model: nn.Module) -> Iterator[Tuple[str, BinaryLayer]]:
    """(name, layer) for every binary layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, BinaryLayer):
            yield name, module


def set_stage(model: nn.Module, stage: int) -> None:
    """Switch every layer of a two-stage method to ``stage`` (BiPer: 1 real-valued sin(omega w),
    2 binary); a ValueError for a model whose method has one stage."""
    training_policy(model).set_stage(model, stage)


def extra_losses(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The loss terms the binary layers add to the objective, summed over layers by name
    (RBCN: ``{"rbcn_kernel": ...}``); empty for methods that add none."""
    totals: Dict[str, torch.Tensor] = {}
    for _, layer in binary_layers(model):
        for key, value in layer.extra_losses().items():
            totals[key] = totals[key] + value if key in totals else value
    return totals
