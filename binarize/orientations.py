"""K-wide orientation feature maps: the graph pass behind CBCN's layout "widen".

Binary layers with ``feature_orientations = K`` (:class:`binarize.layers.BinaryLayer`) read and
write feature maps that carry K orientation channels per channel, orientation-major: channel
``j * C + c`` of a K-wide map is orientation j of channel c. :func:`widen_orientations` makes the
graph around them agree, in one walk over the nodes in order:

- a plain map that enters the K-wide region (the input of the first binary layer, the identity
  shortcut that skips it) is replicated K times (:func:`copy_orientations`, tag
  ``"orientation_copies"``);
- per-channel and spatial operations on a K-wide map stay in the region: a BatchNorm (or a PReLU
  with one slope per channel) is widened to K * C channels, each orientation channel starting from
  the float module's values and then trained on its own; activations, pooling, dropout and additions
  are unchanged;
- a float module that mixes channels (the shortcuts' 1x1 convs: a ResNet's downsample branch,
  Bi-Real's AvgPool + conv + BatchNorm, the parameter-free shortcut; any other float conv between
  binary layers) runs on each orientation with the same weights (:class:`PerOrientation`), so
  orientation j of its output depends on orientation j of its input only, as through an identity
  shortcut; its BatchNorm is K-wide;
- every other consumer of a K-wide map (flatten, a Linear, the classifier, an op the pass does not
  know) gets the max over orientations (:func:`pool_orientations`, tag ``"orientation_pool"``): in a
  classification network that is the one place before the classifier.
"""
from __future__ import annotations

import copy
import operator
from typing import Dict, Sequence, Set

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .layers import BinaryLayer
from .matchers import module_of
from .passes import ParameterFreeShortcut, topological_sort
from .tags import tag, tag_of


def copy_orientations(x: torch.Tensor, orientations: int) -> torch.Tensor:
    """A plain map (N, C, ...) as a K-wide one (N, K * C, ...): each orientation a copy."""
    return torch.cat([x] * orientations, 1)


def pool_orientations(x: torch.Tensor, orientations: int) -> torch.Tensor:
    """A K-wide map (N, K * C, ...) pooled to (N, C, ...): the max over the K orientations."""
    return x.unflatten(1, (orientations, -1)).amax(1)


class PerOrientation(nn.Module):
    """Runs ``module`` (a float module that mixes channels) on each orientation of a K-wide map with
    the same weights: the orientations are folded into the batch axis (a reshape, orientation-major
    channels being contiguous per orientation) and unfolded after."""

    def __init__(self, module: nn.Module, orientations: int):
        super().__init__()
        self.module, self.orientations = module, orientations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x.unflatten(1, (self.orientations, -1)).flatten(0, 1))
        return y.unflatten(0, (-1, self.orientations)).flatten(1, 2)

    def extra_repr(self) -> str:
        return f"orientations={self.orientations}"


# Modules and functions that act per channel or per position: a K-wide input gives a K-wide output.
_KEEP_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                 nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_KEEP_FUNCTIONS = {operator.add, torch.add, F.relu, torch.relu, F.relu6, F.hardtanh, F.leaky_relu, F.gelu,
                   F.silu, torch.sigmoid, torch.tanh, F.dropout, F.max_pool2d, F.avg_pool2d,
                   F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_KEEP_METHODS = {"add", "relu", "sigmoid", "tanh"}


def _replace(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, module)


def _keeps_width(gm: fx.GraphModule, node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _KEEP_FUNCTIONS)
            or (node.op == "call_method" and node.target in _KEEP_METHODS))


def _only_feeds_wide_layers(gm: fx.GraphModule, node: fx.Node, binary: Sequence[str], k: int) -> bool:
    """``node`` is a sign input convert built (a Hardtanh, or a PReLU of one slope) that only K-wide
    binary layers read."""
    found, module = tag_of(node), module_of(gm, node)
    elementwise = isinstance(module, nn.Hardtanh) or (isinstance(module, nn.PReLU) and module.num_parameters == 1)
    return (found is not None and found.role == "sign_input" and elementwise
            and all(user.op == "call_module" and user.target in binary
                    and module_of(gm, user).feature_orientations == k for user in node.users))


def widen_orientations(gm: fx.GraphModule, binary: Sequence[str], orientations: int) -> None:
    """Make the feature maps between the binary layers ``binary`` (whose ``feature_orientations`` is
    ``orientations``) K-wide, as the module docstring says. The model's last Conv2d/Linear (the
    classifier) always reads a pooled, plain map. A module called both on K-wide and on plain maps
    is an error naming it."""
    k = orientations
    layers = [n for n in gm.graph.nodes if isinstance(module_of(gm, n), (nn.Conv2d, nn.Linear))]
    classifier = layers[-1] if layers else None
    wide: Set[fx.Node] = set()
    copies: Dict[fx.Node, fx.Node] = {}
    pooled: Dict[fx.Node, fx.Node] = {}
    widened: Dict[str, bool] = {}  # module target -> whether it was called on K-wide maps

    def as_wide(value: fx.Node) -> fx.Node:
        if value in wide:
            return value
        if value not in copies:
            with gm.graph.inserting_after(value):
                copies[value] = tag(gm.graph.call_function(copy_orientations, (value, k)), "orientation_copies")
        return copies[value]

    def as_plain(value: fx.Node) -> fx.Node:
        if value not in pooled:
            with gm.graph.inserting_after(value):
                pooled[value] = tag(gm.graph.call_function(pool_orientations, (value, k)), "orientation_pool")
        return pooled[value]

    def note_call(node: fx.Node, is_wide: bool) -> None:
        if node.op != "call_module":
            return
        if widened.setdefault(node.target, is_wide) != is_wide:
            raise ValueError(f"convert(layout='widen'): module '{node.target}' is called on K-wide and on plain "
                             f"feature maps; give each call its own module, or use layout='max'")

    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "get_attr"):
            continue
        module = module_of(gm, node)
        inputs = node.all_input_nodes
        if isinstance(module, BinaryLayer) and module.feature_orientations == k and node.target in binary:
            source = node.args[0]
            if source not in wide and _only_feeds_wide_layers(gm, source, binary, k):
                # The sign input convert put there runs on the copies: the exporter then drops it.
                source.replace_input_with(source.args[0], as_wide(source.args[0]))
                widened[source.target] = True
                wide.add(source)
            node.replace_input_with(source, as_wide(source))
            wide.add(node)
            continue
        if not any(i in wide for i in inputs):
            note_call(node, False)
            continue
        grows = node is not classifier and (_keeps_width(gm, node) or (
            module is not None and _widen_module(module, k, probe=True) is not None))
        if grows:
            for value in inputs:
                node.replace_input_with(value, as_wide(value))
            if module is not None and not widened.get(node.target):
                _replace(gm, node.target, _widen_module(module, k))
            note_call(node, True)
            wide.add(node)
        else:
            for value in inputs:
                if value in wide:
                    node.replace_input_with(value, as_plain(value))
            note_call(node, False)
    topological_sort(gm.graph)
    gm.recompile()


def _widen_module(module: nn.Module, k: int, probe: bool = False):
    """The K-wide form of a float module, or None when it must not see a K-wide map (``probe``:
    only answer whether it has one, building nothing)."""
    if isinstance(module, BinaryLayer):
        return None
    if isinstance(module, nn.BatchNorm2d):
        if probe:
            return module
        wide = nn.BatchNorm2d(k * module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        with torch.no_grad():
            for name, value in list(module.named_parameters()) + list(module.named_buffers()):
                getattr(wide, name).copy_(value if value.dim() == 0 else value.repeat(k))
        return wide.to(next(module.buffers(), torch.zeros(())).device).train(module.training)
    if isinstance(module, nn.PReLU):
        if probe or module.num_parameters == 1:
            return module
        wide = copy.deepcopy(module)
        wide.num_parameters = k * module.num_parameters
        wide.weight = nn.Parameter(module.weight.detach().repeat(k))
        return wide
    if isinstance(module, _KEEP_MODULES):
        return module
    if isinstance(module, nn.Sequential):  # Bi-Real's shortcut: AvgPool, 1x1 conv, BatchNorm
        children = [_widen_module(child, k, probe) for child in module]
        return None if any(c is None for c in children) else (module if probe else nn.Sequential(*children))
    if isinstance(module, (nn.Conv2d, ParameterFreeShortcut)):
        return module if probe else PerOrientation(module, k)
    return None
