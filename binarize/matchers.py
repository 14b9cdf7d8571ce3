"""What a node of a ``torch.fx`` graph is, decided in one place for every stage that asks.

The conversion passes (:mod:`binarize.passes`), the exporter (``binarize.converters.export``) and the
trainer's feature selection (:mod:`binarize.tags`) all look at the same graph shapes: a ReLU-like
activation, the ops a ReLU's non-negativity passes through, an addition, the BatchNorm after a layer.
Each question has one function here, so the stages cannot disagree.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

_ADD_FUNCTIONS = {operator.add, torch.add}
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6}
# Ops that carry a ReLU's non-negativity through to a binary layer's input: the ReLU in front
# of them must be replaced too (e.g. ReLU -> MaxPool -> conv in VGG and the ResNet stem).
_PASS_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.Dropout, nn.Identity, nn.Flatten)
_PASS_FUNCTIONS = {torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                   F.adaptive_max_pool2d, F.dropout}
_PASS_METHODS = {"flatten", "view", "reshape"}
# The subset that commutes with a monotone non-decreasing activation f: op(f(z)) == f(op(z)).
_COMMUTING_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Flatten)
_COMMUTING_FUNCTIONS = {torch.flatten, F.max_pool2d, F.adaptive_max_pool2d}
# What a squeeze-excitation branch runs between its global pooling and its convs: the map stays 1x1.
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Hardtanh,
                        nn.GELU, nn.PReLU, nn.LeakyReLU, nn.Dropout, nn.Identity, nn.modules.batchnorm._BatchNorm)
_ELEMENTWISE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.hardswish, F.silu, F.gelu, F.dropout}
_GLOBAL_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def module_of(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    """The module a ``call_module`` node calls; None for every other node."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_add(node: fx.Node) -> bool:
    """``a + b``, ``torch.add(a, b)`` or ``a.add(b)`` / ``a.add_(b)``."""
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in ("add", "add_")))


def is_relu_like(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``nn.ReLU``, ``nn.ReLU6``, ``F.relu``, ``torch.relu``, ``F.relu6`` or ``Tensor.relu``: its output is >= 0."""
    return (isinstance(module_of(gm, node), _RELU_MODULES)
            or (node.op == "call_function" and node.target in _RELU_FUNCTIONS)
            or (node.op == "call_method" and node.target == "relu"))


def is_pass_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Pooling, dropout, identity, flatten, view or reshape: a non-negative input gives a non-negative output."""
    return (isinstance(module_of(gm, node), _PASS_MODULES)
            or (node.op == "call_function" and node.target in _PASS_FUNCTIONS)
            or (node.op == "call_method" and node.target in _PASS_METHODS))


def commutes_with_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Max-pooling, identity, flatten, view or reshape: ``op(relu(z)) == relu(op(z))``."""
    return (isinstance(module_of(gm, node), _COMMUTING_MODULES)
            or (node.op == "call_function" and node.target in _COMMUTING_FUNCTIONS)
            or (node.op == "call_method" and node.target in _PASS_METHODS))


def _is_global_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = module_of(gm, node)
    if isinstance(module, _GLOBAL_POOL_MODULES):
        return module.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    if node.op == "call_method" and node.target in ("mean", "amax"):  # x.mean((2, 3), keepdim=True)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        dims = (dims,) if isinstance(dims, int) else dims
        return bool(keepdim) and dims is not None and set(dims) in ({2, 3}, {-2, -1})
    return False


def reads_pooled_map(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the conv at ``node`` reads a globally pooled 1x1 map: a global pooling, then only
    elementwise modules, BatchNorms and 1x1 convs (a squeeze-excitation branch's two convs). Such a conv
    is a fully connected layer on one vector per image."""
    cursor = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    while cursor is not None:
        if _is_global_pool(gm, cursor):
            return True
        module = module_of(gm, cursor)
        pointwise = isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
        elementwise = (isinstance(module, _ELEMENTWISE_MODULES) or is_relu_like(gm, cursor)
                       or (cursor.op == "call_function" and cursor.target in _ELEMENTWISE_FUNCTIONS)
                       or (cursor.op == "call_method" and cursor.target == "sigmoid"))
        if not (pointwise or elementwise):
            return False
        cursor = cursor.args[0] if cursor.args and isinstance(cursor.args[0], fx.Node) else None
    return False


def following_batchnorm(gm: fx.GraphModule, node: fx.Node) -> Optional[fx.Node]:
    """The BatchNorm after ``node``: its only consumer, when that consumer calls a BatchNorm module
    (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``). None otherwise: a BatchNorm that shares the
    layer's output with another consumer does not normalize everything the layer feeds on, so it
    is neither folded into the layer nor the layer's feature map."""
    users = list(node.users)
    if len(users) == 1 and isinstance(module_of(gm, users[0]), nn.modules.batchnorm._BatchNorm):
        return users[0]
    return None


def preserves_sign(module: nn.Module) -> bool:
    """A ``Hardtanh(min_val, max_val)`` with ``min_val < 0 < max_val``: it keeps the sign of every
    input (sign(0) = +1), so a binary layer reading it gives the same result without it."""
    return isinstance(module, nn.Hardtanh) and module.min_val < 0 < module.max_val
