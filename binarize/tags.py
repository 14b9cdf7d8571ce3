"""What :func:`binarize.convert` built, recorded on the graph so later stages read it instead of re-deriving it.

Each pass tags the nodes it creates or decides on with ``node.meta["binarize"] = Tag(...)``:

========================  ======================================================================
role                      node
========================  ======================================================================
``"binary_layer"``        a binary layer's call; ``batchnorm`` names the BatchNorm module after it
                          (:func:`binarize.matchers.following_batchnorm`), None when none follows
``"sign_input"``          the activation put in front of a binary layer in place of a ReLU
                          (``activation="hardtanh"`` or ``"prelu"``)
``"sign_input_copy"``     a pass-through op (average pooling, dropout) cloned behind it
``"moved_relu"``          a ReLU moved behind max-pooling/flatten for the float consumers
``"double_skip"``         a new shortcut branch (Bi-Real's AvgPool + 1x1 conv + BN, or parameter-free)
``"double_skip_add"``     the addition of a double skip
``"orientation_copies"``  a plain map replicated K times where it enters a K-wide region (CBCN's
                          layout "widen", :mod:`binarize.orientations`)
``"orientation_pool"``    the max over the K orientations where a K-wide map leaves the region
``"rprelu"``              the RPReLU after a binary layer's BatchNorm (``rprelu=True``)
========================  ======================================================================

The tags live in ``node.meta``, which ``GraphModule.recompile()`` and ``copy.deepcopy`` keep. They do
not travel through ``state_dict`` (re-create the model with the same ``convert`` call, which tags it
again) nor through pickling a GraphModule (it is rebuilt from its code). A graph without tags (a
model built by hand from binary layers) is read with the rules of :mod:`binarize.matchers`, which
are also the rules the passes used to write the tags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch.fx as fx
from torch import nn

from . import matchers
from .layers import BinaryLayer

KEY = "binarize"
ROLES = ("binary_layer", "sign_input", "sign_input_copy", "moved_relu", "double_skip", "double_skip_add",
         "orientation_copies", "orientation_pool", "rprelu")


@dataclass(frozen=True)
class Tag:
    """The ``node.meta["binarize"]`` entry of a node convert built or decided on."""

    role: str
    #: For a binary layer: the target of the BatchNorm module after it, None when none follows.
    batchnorm: Optional[str] = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Tag: unknown role {self.role!r}; one of {ROLES}")


def tag(node: fx.Node, role: str, **fields) -> fx.Node:
    """Record on ``node`` that it has ``role``; returns ``node``."""
    node.meta[KEY] = Tag(role, **fields)
    return node


def tag_of(node: fx.Node) -> Optional[Tag]:
    return node.meta.get(KEY)


def is_tagged(graph: fx.Graph) -> bool:
    """True for a graph built by :func:`binarize.convert` (whose nodes carry tags)."""
    return any(KEY in node.meta for node in graph.nodes)


def batchnorm_after(gm: fx.GraphModule, node: fx.Node) -> Optional[fx.Node]:
    """The node of the BatchNorm after the binary layer called by ``node``: the tagged one, or for an
    untagged node the :func:`~binarize.matchers.following_batchnorm` rule; None when none follows."""
    found = tag_of(node)
    if found is None:
        return matchers.following_batchnorm(gm, node)
    return next((user for user in node.users if user.op == "call_module" and user.target == found.batchnorm), None)


def is_sign_input(gm: fx.GraphModule, node: fx.Node, tagged: bool) -> bool:
    """Whether ``node`` is an activation put in front of binary layers only for their sign: in a
    tagged graph (``tagged``, see :func:`is_tagged`) the ones convert inserted; in an untagged one
    every :func:`~binarize.matchers.preserves_sign` Hardtanh. A user's own Hardtanh in a converted
    model is the user's: it stays."""
    if tagged:
        found = tag_of(node)
        return found is not None and found.role == "sign_input"
    return matchers.preserves_sign(matchers.module_of(gm, node))


def binary_layer_nodes(gm: fx.GraphModule) -> List[fx.Node]:
    """The nodes that call a binary layer, in graph order."""
    return [node for node in gm.graph.nodes if isinstance(matchers.module_of(gm, node), BinaryLayer)]


def feature_maps(model: nn.Module) -> List[str]:
    """The module names whose outputs are the binary network's feature maps (RBCN's adversarial
    distillation): for each binary layer call in graph order, the BatchNorm after it
    (:func:`batchnorm_after`), or the layer itself when no BatchNorm follows. A model that is not a
    GraphModule gives its binary layers' names."""
    return list(feature_orientations(model))


def feature_orientations(model: nn.Module) -> Dict[str, int]:
    """:func:`feature_maps` with the orientation channels per channel each one carries: the layer's
    ``feature_orientations`` (K for CBCN's layout "widen", whose maps are K times as wide as the
    float model's; 1 otherwise)."""
    if not isinstance(model, fx.GraphModule):
        return {name: module.feature_orientations for name, module in model.named_modules()
                if isinstance(module, BinaryLayer)}
    found = {}
    for node in binary_layer_nodes(model):
        bn = batchnorm_after(model, node)
        found[bn.target if bn is not None else node.target] = model.get_submodule(node.target).feature_orientations
    return found
