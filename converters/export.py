"""``binarize.export``: a binary model -> an ONNX file with bit-packed BinaryConv2d / BinaryLinear ops.

Three steps:

1. :func:`prepare` - on a copy of the model in eval mode, every binary layer becomes a
   :class:`~binarize.converters.ops.PackedBinaryConv2d` / ``PackedBinaryLinear`` holding its packed
   signs, multiplier and bias (packed once, here). The BatchNorm after a binary conv (the one
   ``convert`` tagged, :mod:`binarize.tags`; in a hand-built model the conv's only consumer, the rule of
   :mod:`binarize.matchers`), if it is a BatchNorm2d with running statistics, is folded into the
   multiplier and bias. Layers with ``orientations > 1`` (CBCN's layout "max") keep it: their conv
   output is max-reduced over orientations first, and a BatchNorm with a negative scale does not
   commute with a max (a K-wide layer's outputs are ordinary output channels: it folds). The Hardtanh ``convert``
   put in front of binary layers is dropped where it only feeds them (they read only its sign, which
   it preserves, and keeps sign(x - t) for an input threshold t in (min_val, max_val]); in a
   hand-built model, every such Hardtanh. Given the example input, each Add of a packed layer's
   output and a tensor of the same shape (a double skip; the shapes from ShapeProp) moves into the
   layer's op as its residual, and a second such Add (a basic block's identity shortcut) as its
   second residual; a residual computed by a parameter-free shortcut without pooling (a widening
   layer's tiled channels, a narrowing layer's group means) is replaced by the shortcut's input,
   which the op tiles or averages itself; a ReLU, ReLU6 or HardSwish that alone reads a binary
   conv's output runs in the op; a ReLU that computes a residual (the activation a double skip
   carries) moves into the op too, and goes when nothing else reads it. Every binary layer exports
   the oldest version of the ``binarize`` ops that all of them can use: 1; 2 with an input
   threshold or one fused Add; 3 with a second Add or a residual ReLU; 4 with a shortcut's input as
   the residual or an activation.
2. :func:`to_onnx` - ``torch.onnx.export(dynamo=True)`` with the custom ops translated to the
   ``binarize`` domain; everything else (shortcuts, float layers, activations, the BatchNorms not
   folded) becomes standard ONNX ops. The result is checked against the op schemas with shape inference.
3. :func:`export` - writes it atomically (a temporary file in the same directory, then a rename).
"""
from __future__ import annotations

import copy
import operator
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple, Union

import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from binarize import batchnorm
from binarize.checkpoint import atomic_write
from binarize.layers import BinaryConv2d, BinaryLayer, BinaryLinear
from binarize.matchers import module_of, preserves_sign
from binarize.passes import ParameterFreeShortcut
from binarize.tags import batchnorm_after, is_sign_input, is_tagged

from .int8 import quantize_float_convs
from .ops import ONNX_TRANSLATIONS, PackedBinaryConv2d, PackedBinaryLinear
from .schemas import register_schemas

__all__ = ["export", "to_onnx", "prepare", "DEFAULT_OPSET", "MAX_IR_VERSION"]

#: Default ONNX opset of the standard ops (ONNX Runtime >= 1.14 runs it).
DEFAULT_OPSET = 18
#: The newest IR version ONNX Runtime 1.31 loads (onnx 1.23 would write 14).
MAX_IR_VERSION = 13

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


# ----------------------------------------------------------------------------------- prepare
class _BinaryLeafTracer(fx.Tracer):
    """Traces a model built by hand around binary layers, keeping each binary layer one call."""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(module, (BinaryLayer, ParameterFreeShortcut)) or super().is_leaf_module(module, qualname)


def _graph_copy(model: nn.Module) -> fx.GraphModule:
    """A deep copy of ``model`` as a GraphModule in eval mode, float32, on the CPU."""
    if isinstance(model, fx.GraphModule):
        gm = copy.deepcopy(model)
    else:
        root = copy.deepcopy(model)
        try:
            graph = _BinaryLeafTracer().trace(root)
        except Exception as err:
            raise TypeError(f"export: torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: "
                            f"{err}); export a model returned by binarize.convert") from err
        gm = fx.GraphModule(root, graph, type(model).__name__)
    # The copy's BatchNorm statistics brought up to date from the model's last training inputs, as
    # the model's own next eval-mode call would, and the recording hook gone before tracers run it.
    batchnorm.freeze(gm)
    return gm.to(device="cpu", dtype=torch.float32).eval()


def _conv_pads(layer: BinaryConv2d) -> Tuple[int, int, int, int]:
    """[top, left, bottom, right]; PyTorch's padding="same" puts the odd pixel at the bottom/right."""
    if layer.padding == "valid":
        return (0, 0, 0, 0)
    if layer.padding == "same":
        totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        return (totals[0] // 2, totals[1] // 2, totals[0] - totals[0] // 2, totals[1] - totals[1] // 2)
    top, left = layer.padding
    return (top, left, top, left)


def _foldable_batchnorm(gm: fx.GraphModule, node: fx.Node) -> Optional[fx.Node]:
    """The BatchNorm after the binary conv ``node`` (:func:`binarize.tags.batchnorm_after`) when it can
    be folded into the conv: a BatchNorm2d with running statistics that is the conv's only consumer."""
    bn_node = batchnorm_after(gm, node)
    if bn_node is None or list(node.users) != [bn_node]:
        return None
    bn = gm.get_submodule(bn_node.target)
    uses_running_stats = bn.running_mean is not None and bn.running_var is not None
    return bn_node if isinstance(bn, nn.BatchNorm2d) and uses_running_stats else None


def _export_weight(name: str, layer: BinaryLayer) -> Tuple[torch.Tensor, torch.Tensor]:
    if layer.real_weights:
        raise ValueError(f"export: binary layer '{name}' is in stage 1 of the two-step schedule (real-valued "
                         f"weights, real_weights=True); finish fine-tuning (stage 2) or set real_weights=False")
    try:
        signs, multiplier = layer.export_weight()
    except Exception as err:
        raise ValueError(f"export: binary layer '{name}' ({type(layer).__name__}) cannot be exported: {err}") from err
    return signs.detach().cpu(), multiplier.detach().cpu().double()


def _bias(layer: BinaryLayer, channels: int) -> torch.Tensor:
    """The layer's bias in float64, zeros when it has none."""
    if layer.bias is None:
        return torch.zeros(channels, dtype=torch.float64)
    return layer.bias.detach().cpu().double()


def _input_threshold(layer: BinaryLayer) -> Optional[torch.Tensor]:
    """The threshold input of the packed op, or None where it would change nothing: x - 0 is x, so a
    freshly converted model (thresholds still 0) exports exactly as without them."""
    t = layer.input_threshold
    return None if t is None or not bool(t.detach().any()) else t.detach().cpu()


def _packed_conv(name: str, layer: BinaryConv2d, bn: Optional[nn.BatchNorm2d]) -> PackedBinaryConv2d:
    """The inference module of ``layer``, with ``bn`` (if given) folded into multiplier and bias.
    Folding runs in float64 so that the float32 result is the correctly rounded one."""
    if layer.groups != 1:
        raise ValueError(f"export: binary conv '{name}' has groups={layer.groups}; BinaryConv2d v1 supports groups=1")
    if layer.padding_mode != "zeros":
        raise ValueError(f"export: binary conv '{name}' has padding_mode={layer.padding_mode!r}; "
                         f"BinaryConv2d zero-pads its binarized input")
    signs, multiplier = _export_weight(name, layer)
    bias = _bias(layer, layer.out_channels)
    geometry = dict(stride=tuple(layer.stride), pads=_conv_pads(layer), dilation=tuple(layer.dilation),
                    threshold=_input_threshold(layer))
    if layer.orientations > 1:  # the max over orientations comes before the bias (and any BatchNorm)
        zeros = torch.zeros(signs.shape[0], dtype=torch.float64)
        return PackedBinaryConv2d(name, signs, multiplier, zeros, orientations=layer.orientations,
                                  post_bias=bias if layer.bias is not None else None, **geometry)
    if bn is not None:
        inv_std = (bn.running_var.detach().cpu().double() + bn.eps).rsqrt()
        scale = inv_std * bn.weight.detach().cpu().double() if bn.affine else inv_std
        shift = bn.bias.detach().cpu().double() if bn.affine else 0.0
        multiplier = multiplier * scale
        bias = (bias - bn.running_mean.detach().cpu().double()) * scale + shift
    return PackedBinaryConv2d(name, signs, multiplier, bias, **geometry)


def _packed_linear(name: str, layer: BinaryLinear) -> PackedBinaryLinear:
    signs, multiplier = _export_weight(name, layer)
    return PackedBinaryLinear(name, signs, multiplier, _bias(layer, layer.out_features),
                              threshold=_input_threshold(layer))


def _replace_module(gm: fx.GraphModule, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, child, module)


def _keeps_signs_for(clip: nn.Hardtanh, layer: nn.Module) -> bool:
    """Whether ``layer`` (a packed binary layer) reads the same signs with and without ``clip``:
    sign(clamp(x, lo, hi) - t) = sign(x - t) for every x exactly when lo < t <= hi (t = 0 without
    an input threshold, which :func:`binarize.matchers.preserves_sign` already checked)."""
    if not isinstance(layer, (PackedBinaryConv2d, PackedBinaryLinear)):
        return False
    t = layer.threshold
    return t is None or bool(((t > clip.min_val) & (t <= clip.max_val)).all())


def _drop_sign_preserving_clips(gm: fx.GraphModule) -> None:
    """Remove a sign-input activation (:func:`binarize.tags.is_sign_input`: in a converted model the
    Hardtanh convert put there) whose every consumer is a packed binary layer that reads its input
    only through sign(x - threshold), which the Hardtanh does not change (:func:`_keeps_signs_for`),
    so the Clip would be computed for nothing at run time."""
    tagged = is_tagged(gm.graph)
    for node in list(gm.graph.nodes):
        if (node.op == "call_module" and is_sign_input(gm, node, tagged) and preserves_sign(module_of(gm, node))
                and node.users and all(_keeps_signs_for(module_of(gm, node), module_of(gm, user))
                                       for user in node.users)):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


_ADDS = (operator.add, torch.add)


def _residual_add(node: fx.Node) -> Optional[Tuple[fx.Node, fx.Node]]:
    """(the other operand, the Add) when ``node`` is a packed layer's call whose only consumer is
    a plain two-tensor Add with a float32 operand of exactly the layer's output shape (the shapes
    :class:`~torch.fx.passes.shape_prop.ShapeProp` recorded), computed by another node."""
    users = list(node.users)
    if len(users) != 1 or len(node.args) != 1:
        return None
    add = users[0]
    is_add = ((add.op == "call_function" and add.target in _ADDS) or
              (add.op == "call_method" and add.target == "add"))
    if not is_add or add.kwargs or len(add.args) != 2 or add.args[0] is add.args[1]:
        return None
    other = add.args[1] if add.args[0] is node else add.args[0]
    if not isinstance(other, fx.Node):
        return None
    mine, theirs, result = (n.meta.get("tensor_meta") for n in (node, other, add))
    same = all(isinstance(m, TensorMetadata) for m in (mine, theirs, result)) and \
        mine.shape == theirs.shape == result.shape and mine.dtype == theirs.dtype == torch.float32
    return (other, add) if same else None


#: The residual inputs of the packed ops, in the order the epilogue adds them.
_RESIDUALS = ("residual", "residual2")


def _fuse_residual_adds(gm: fx.GraphModule, args: Tuple[torch.Tensor, ...]) -> None:
    """Move the Adds of a packed layer's output and a same-shape tensor (a double skip's shortcut;
    BatchNorm already folded into multiplier and bias), up to two in a chain (then a basic block's
    identity shortcut), into the layer's op as its residuals (BinaryConv2d / BinaryLinear v2, v3):
    the sum is then written once, as the op stores its output, instead of by a separate pass over
    two tensors per Add."""
    ShapeProp(gm).propagate(*args)
    for node in list(gm.graph.nodes):
        module = module_of(gm, node) if node.op == "call_module" else None
        if not isinstance(module, (PackedBinaryConv2d, PackedBinaryLinear)) or not module.takes_residual:
            continue
        call, inputs, residuals = node, node.args, {}  # (erase_node clears an erased node's args)
        for name in _RESIDUALS:
            match = _residual_add(call)
            if match is None:
                break
            other, add = match
            residuals[name] = other
            with gm.graph.inserting_before(add):  # every operand exists here; the layer's call may be earlier
                fused = gm.graph.call_module(node.target, inputs, dict(residuals))
            fused.meta = dict(add.meta)
            add.replace_all_uses_with(fused)
            gm.graph.erase_node(add)
            gm.graph.erase_node(call)
            call = fused


def _fuse_channel_shortcuts(gm: fx.GraphModule) -> None:
    """A binary conv's fused residual that a parameter-free shortcut without pooling computes (its
    input's channels tiled, or adjacent groups of them averaged) reads the shortcut's input instead
    (BinaryConv2d v4 tiles or averages it in the op): the shortcut's Concat or ReduceMean was a pass
    over the map of its own (benchmarks/RESULTS.md, "Parameter-free shortcuts inside BinaryConv2d v4").
    The shapes are ShapeProp's from :func:`_fuse_residual_adds`."""
    for node in list(gm.graph.nodes):
        shortcut = node.kwargs.get("residual")
        if not isinstance(module_of(gm, node), PackedBinaryConv2d) or not isinstance(shortcut, fx.Node):
            continue
        module = module_of(gm, shortcut)
        if not isinstance(module, ParameterFreeShortcut) or not isinstance(module.pool, nn.Identity) \
                or len(shortcut.args) != 1 or shortcut.kwargs or not isinstance(shortcut.args[0], fx.Node):
            continue
        source, output = shortcut.args[0].meta.get("tensor_meta"), node.meta.get("tensor_meta")
        if not (isinstance(source, TensorMetadata) and isinstance(output, TensorMetadata)
                and source.dtype == torch.float32 and len(source.shape) == 4
                and (source.shape[0], *source.shape[2:]) == (output.shape[0], *output.shape[2:])):
            continue
        node.kwargs = {**node.kwargs, "residual": shortcut.args[0]}
        if not shortcut.users:
            gm.graph.erase_node(shortcut)


def _relu_input(node: fx.Node, gm: fx.GraphModule) -> Optional[fx.Node]:
    """x when ``node`` computes relu(x) out of place (F.relu, torch.relu, x.relu(), nn.ReLU; ``convert``
    switched in-place activations off), else None."""
    if node.op == "call_module":
        module = module_of(gm, node)
        is_relu = type(module) is nn.ReLU and not module.inplace and not node.kwargs
    elif node.op in ("call_function", "call_method"):
        is_relu = node.target in (torch.relu, F.relu, "relu") and not node.kwargs.get("inplace", False)
    else:
        is_relu = False
    return node.args[0] if is_relu and len(node.args) == 1 and isinstance(node.args[0], fx.Node) else None


def _activation_of(node: fx.Node, gm: fx.GraphModule) -> Optional[Tuple[int, fx.Node]]:
    """(BinaryConv2d v4's activation code, its input) when ``node`` computes ReLU, ReLU6 or HardSwish of
    one tensor out of place (``convert`` switched in-place activations off), else None."""
    source = _relu_input(node, gm)
    if source is not None:
        return 1, source
    if node.op == "call_module":
        module = module_of(gm, node)
        code = (2 if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0) else
                3 if isinstance(module, nn.Hardswish) else None)
        if getattr(module, "inplace", False) or node.kwargs:
            code = None
    elif node.op == "call_function":
        code = {F.relu6: 2, F.hardswish: 3}.get(node.target)
        if node.kwargs.get("inplace", False):
            code = None
    else:
        code = None
    if code is None or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
        return None
    return code, node.args[0]


def _fuse_activations(gm: fx.GraphModule) -> None:
    """A ReLU, ReLU6 or HardSwish that is the only reader of a binary conv's output (its residuals
    already fused) runs in the op (BinaryConv2d v4's ``activation``), on each output tile as it is
    computed, instead of as a pass over the map: MobileNets' expansion layers."""
    for node in list(gm.graph.nodes):
        layer = module_of(gm, node)
        if not isinstance(layer, PackedBinaryConv2d) or not layer.takes_residual or node.kwargs.get("activation") \
                or len(node.users) != 1:
            continue
        (user,) = node.users
        found = _activation_of(user, gm)
        if found is None or found[1] is not node:
            continue
        node.kwargs = {**node.kwargs, "activation": found[0]}
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)


def _fuse_residual_relus(gm: fx.GraphModule) -> None:
    """A fused residual computed by a ReLU reads the ReLU's input instead, with the op's
    ``residual_relu`` flag set (v3): relu is exact, so the sum is the same, and a ReLU that only fed
    residuals (a double skip's relu(x) beside the sign of x) is no longer a pass over the map."""
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not any(name in node.kwargs for name in _RESIDUALS):
            continue
        kwargs, relu = dict(node.kwargs), [0, 0]
        for k, name in enumerate(_RESIDUALS):
            operand = kwargs.get(name)
            source = _relu_input(operand, gm) if isinstance(operand, fx.Node) else None
            if source is not None:
                kwargs[name], relu[k] = source, 1
        if any(relu):
            node.kwargs = {**kwargs, "residual_relu": tuple(relu)}
    for node in reversed(list(gm.graph.nodes)):  # the ReLUs nothing reads any more
        if not node.users and _relu_input(node, gm) is not None:
            gm.graph.erase_node(node)


def _set_op_version(gm: fx.GraphModule) -> None:
    """The newest version any packed layer or call needs (``needed_version``) on every packed layer,
    so a model that uses none of version 2's or 3's inputs exports exactly as before they existed;
    an ONNX model imports one version of the ``binarize`` domain."""
    layers = [m for m in gm.modules() if isinstance(m, (PackedBinaryConv2d, PackedBinaryLinear))]
    needs = [layer.needed_version() for layer in layers]  # also the layers torch.fx did not trace into
    for node in gm.graph.nodes:
        layer = module_of(gm, node) if node.op == "call_module" else None
        if isinstance(layer, (PackedBinaryConv2d, PackedBinaryLinear)):
            residual = node.kwargs.get("residual")
            meta = residual.meta.get("tensor_meta") if isinstance(residual, fx.Node) else None
            channels = meta.shape[1] if isinstance(layer, PackedBinaryConv2d) and isinstance(meta, TensorMetadata) \
                else None
            needs.append(layer.needed_version("residual" in node.kwargs, "residual2" in node.kwargs,
                                              node.kwargs.get("residual_relu", (0, 0)), channels,
                                              node.kwargs.get("activation", 0)))
    version = max(needs, default=1)
    for layer in layers:
        layer.op_version = version


def prepare(model: nn.Module, example_input: Optional[Inputs] = None) -> fx.GraphModule:
    """The inference form of ``model`` that :func:`to_onnx` exports, runnable in PyTorch: a copy in
    eval mode whose binary layers are packed modules, with the foldable BatchNorms folded in and,
    given ``example_input`` (the shapes tell which Adds can be fused), the Adds of a binary layer's
    output and a same-shape tensor fused into the layer's op. ``model`` itself is not modified."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"export expects an nn.Module, got {type(model).__name__}")
    gm = _graph_copy(model)
    calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), BinaryLayer):
            continue
        name, layer = node.target, gm.get_submodule(node.target)
        if isinstance(layer, BinaryLinear):
            _replace_module(gm, name, _packed_linear(name, layer))
            continue
        # A layer called more than once could be followed by different BatchNorms: fold none then.
        bn_node = _foldable_batchnorm(gm, node) if calls[name] == 1 and layer.orientations == 1 else None
        bn = gm.get_submodule(bn_node.target) if bn_node is not None else None
        _replace_module(gm, name, _packed_conv(name, layer, bn))
        if bn_node is not None:
            bn_node.replace_all_uses_with(node)
            gm.graph.erase_node(bn_node)
    # Binary layers inside modules torch.fx did not trace into (leaf_modules) are swapped unfolded.
    for name, layer in list(gm.named_modules()):
        if isinstance(layer, BinaryConv2d):
            _replace_module(gm, name, _packed_conv(name, layer, None))
        elif isinstance(layer, BinaryLinear):
            _replace_module(gm, name, _packed_linear(name, layer))
    _drop_sign_preserving_clips(gm)
    gm.recompile()
    if example_input is not None:
        _fuse_residual_adds(gm, _example_args(example_input))
        _fuse_channel_shortcuts(gm)
        _fuse_activations(gm)
        _fuse_residual_relus(gm)
        gm.recompile()
    _set_op_version(gm)
    gm.delete_all_unused_submodules()
    return gm


# ----------------------------------------------------------------------------------- to_onnx
def _example_args(example_input: Inputs) -> Tuple[torch.Tensor, ...]:
    args = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise TypeError("export: example_input must be a tensor or a sequence of tensors, got "
                        f"{type(example_input).__name__}")
    return tuple(a.detach().cpu().float() if a.is_floating_point() else a.detach().cpu() for a in args)


def _limit_ir_version(proto: onnx.ModelProto) -> None:
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION


def to_onnx(model: nn.Module, example_input: Inputs, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True,
            input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
            fuse_residual_adds: bool = True) -> onnx.ModelProto:
    """The ONNX model of ``model`` (see :func:`export`), checked, without writing a file."""
    args = _example_args(example_input)
    if dynamic_batch:
        # torch.export specializes an axis whose example size is 1 even when it is declared dynamic,
        # wherever the trace reads that size (nn.MultiheadAttention's reshapes): the graph would then
        # run at batch 1 only. Two copies of a batch-1 example keep the batch axis symbolic.
        args = tuple(torch.cat([a, a]) if a.dim() and a.shape[0] == 1 else a for a in args)
    prepared = prepare(model, args if fuse_residual_adds else None)
    register_schemas()  # the exporter builds the custom nodes from the registered schemas
    dynamic_shapes = tuple({0: torch.export.Dim.DYNAMIC} for _ in args) if dynamic_batch else None
    with warnings.catch_warnings():
        # torch.export's own pytree code trips this deprecation on every export; nothing to act on.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        program = torch.onnx.export(prepared, args, dynamo=True, opset_version=opset,
                                    dynamic_shapes=dynamic_shapes, custom_translation_table=ONNX_TRANSLATIONS,
                                    input_names=input_names, output_names=output_names, external_data=False,
                                    verbose=False)
    proto = program.model_proto
    _limit_ir_version(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model: nn.Module, path: Union[str, os.PathLike], example_input: Inputs, *,
           opset: int = DEFAULT_OPSET, dynamic_batch: bool = True, input_names: Optional[Sequence[str]] = None,
           output_names: Optional[Sequence[str]] = None, calibration: Optional[Iterable] = None,
           fuse_residual_adds: bool = True) -> Path:
    """Export the binary ``model`` to the ONNX file ``path``; returns its path.

    Binary layers become ``binarize``-domain BinaryConv2d / BinaryLinear nodes with bit-packed
    weights (run them with :func:`binarize.runtime.session`); everything else is standard ONNX
    (``opset``). ``example_input`` is a tensor (or a sequence of tensors, one per forward argument)
    of the shape the model will see; with ``dynamic_batch`` its first axis is left free.
    ``calibration`` (a few batches of typical inputs) also stores the float convolutions that stay
    in the model in int8 (QDQ form, :mod:`binarize.converters.int8`), with their ranges measured on
    those batches; without it everything but the binary layers stays float32. Check the accuracy:
    a network without double skips (xnor) can lose most of it (benchmarks/RESULTS.md).
    With ``fuse_residual_adds`` (the default) the Adds of a binary layer's output and same-shape
    tensors (a double skip, then a basic block's identity shortcut) run inside the binary op, and
    so does a ReLU that computes such a tensor. One fused Add or a layer's ``input_threshold`` needs
    version 2 of the ``binarize`` operators, a second Add or a fused ReLU version 3; the file
    imports the oldest version its layers can use (a model using none of them is written with
    version 1, as before version 2 existed).
    The model is not modified; the file is written atomically. A converted model that trained since
    it last ran in eval mode is exported with the BatchNorm statistics its next eval-mode call
    would recompute (:mod:`binarize.batchnorm`).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"export: directory {path.parent} does not exist (path={str(path)!r})")
    proto = to_onnx(model, example_input, opset=opset, dynamic_batch=dynamic_batch, input_names=input_names,
                    output_names=output_names, fuse_residual_adds=fuse_residual_adds)
    if calibration is not None:
        proto, _ = quantize_float_convs(proto, calibration)
    atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))
    return path
