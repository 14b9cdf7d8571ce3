"""The graph passes behind :func:`binarize.convert`, each one function over a ``torch.fx.GraphModule``.

``convert`` runs them in this order:

1. :func:`trace` - symbolic trace, with a clear error naming the module that cannot be traced;
2. :func:`disable_inplace` - in-place activations would overwrite tensors the new branches read;
3. :func:`plan_binary_layers` - which Conv2d/Linear modules become binary, and why the others stay float;
4. :func:`keep_costly_layers_float` - layers whose binary version with its new shortcut would not be
   faster than the float layer (:func:`layer_cost`) stay float;
5. :func:`add_double_skips` - a Bi-Real shortcut around every binary conv and its BatchNorm;
6. :func:`rewrite_sign_inputs` - a binary layer binarizes its input, and sign(ReLU(x)) = +1 everywhere
   (sign(0) = +1), so the ReLU-like activation in front of it is replaced, for that layer only;
7. :func:`swap_binary_layers` - replace the planned modules by the method's binary layers;
8. the method's own step (``Method.rewrite_graph``): CBCN's layout "widen" runs
   :func:`binarize.orientations.widen_orientations`, which makes the maps around its layers K-wide.
9. :func:`add_rprelus` - with ``rprelu``, a learnable RPReLU after every binary layer's BatchNorm.

:func:`topological_sort` restores a valid node order after passes that add edges. What a node is (a
ReLU, a pass-through op, the BatchNorm after a layer) is decided by :mod:`binarize.matchers`; what the
passes build is tagged on the nodes (:mod:`binarize.tags`) for the exporter and the trainer to read.
"""
from __future__ import annotations

import operator
import re
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .config import ConvertConfig
from .layers import RPReLU
from .matchers import (commutes_with_relu, following_batchnorm, is_add, is_pass_through, is_relu_like,
                       module_of, reads_pooled_map)
from .tags import tag


class TraceError(RuntimeError):
    """torch.fx could not trace part of the model."""


# ----------------------------------------------------------------------------------------- trace
class _ScopeTracer(fx.Tracer):
    """A tracer that honours extra leaf modules and remembers which module failed to trace."""

    def __init__(self, leaf_names: Sequence[str], leaf_types: tuple):
        super().__init__()
        self.leaf_names = set(leaf_names)
        self.leaf_types = leaf_types
        self.failed_module: Optional[str] = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types))
                or super().is_leaf_module(m, qualname))

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_module is None:  # the innermost module is the first to see the error
                self.failed_module = self.path_of_module(m)
            raise


def trace(model: nn.Module, leaf_modules: Sequence[Union[str, type]] = ()) -> fx.GraphModule:
    """Symbolically trace ``model``; ``leaf_modules`` (names or types) are kept as opaque calls."""
    names = [m for m in leaf_modules if isinstance(m, str)]
    types = tuple(m for m in leaf_modules if isinstance(m, type))
    known = {name for name, _ in model.named_modules()}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f"leaf_modules: no module named {missing} in {type(model).__name__}")
    tracer = _ScopeTracer(names, types)
    try:
        graph = tracer.trace(model)
    except Exception as err:
        where = tracer.failed_module
        if where:
            culprit = type(model.get_submodule(where)).__name__
            raise TraceError(
                f"torch.fx could not trace module '{where}' ({culprit}): {type(err).__name__}: {err}\n"
                f"Mark it as a leaf so it is kept as one opaque call (its convolutions stay float): "
                f"binarize.convert(model, ..., leaf_modules=['{where}'])") from err
        raise TraceError(
            f"torch.fx could not trace the forward of {type(model).__name__} itself: "
            f"{type(err).__name__}: {err}\nOnly its submodules can be marked as leaves "
            f"(leaf_modules=[...]); the top-level forward must be traceable.") from err
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.train(model.training)
    for name, module in gm.named_modules():
        is_leaf = name in tracer.leaf_names or (types and isinstance(module, types))
        if is_leaf and any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules()):
            warnings.warn(f"leaf module '{name}' is not traced into: its Conv2d/Linear layers stay float")
    return gm


# ------------------------------------------------------------------------------- disable_inplace
_INPLACE_FUNCTIONS = {torch.relu_: torch.relu, F.relu_: F.relu, F.hardtanh_: F.hardtanh,
                      F.leaky_relu_: F.leaky_relu, F.elu_: F.elu, torch.clamp_: torch.clamp}
_INPLACE_METHODS = {"relu_", "clamp_", "clamp_min_", "clamp_max_", "hardtanh_", "sigmoid_", "tanh_"}


def _make_out_of_place(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Rewrite ``node`` to its out-of-place form if it is an in-place activation; True if it was one.
    (A module's own ``inplace`` flag is switched off by :func:`disable_inplace` afterwards.)"""
    if node.op == "call_module":
        return getattr(gm.get_submodule(node.target), "inplace", False) is True
    if node.op == "call_function" and node.target in _INPLACE_FUNCTIONS:
        node.target = _INPLACE_FUNCTIONS[node.target]
        return True
    if node.op == "call_method" and node.target in _INPLACE_METHODS:
        node.target = node.target[:-1]
        return True
    # F.relu(x, True) reaches the tracer as inplace=True too (torch.nn.functional passes it by keyword)
    if node.op in ("call_function", "call_method") and node.kwargs.get("inplace") is True:
        node.kwargs = {**node.kwargs, "inplace": False}
        return True
    return False


def disable_inplace(gm: fx.GraphModule) -> None:
    """Make every activation out-of-place: the new shortcut and sign-input nodes read tensors
    that an in-place ReLU further down the graph would otherwise overwrite.

    An in-place op changes its input for everything that reads it afterwards, whether or not its
    result is used (``x.relu_()`` or ``F.relu(x, inplace=True)`` written as a statement). Its
    out-of-place form does not, so the later readers of the input are rewired to read its result."""
    order = {node: index for index, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if not _make_out_of_place(gm, node) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        for user in list(source.users):
            if order[user] > order[node]:
                user.replace_input_with(source, node)
    for module in gm.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False


# -------------------------------------------------------------------------------- plan
@dataclass
class LayerPlan:
    """The outcome of :func:`plan_binary_layers`: binary module names in graph order, and for
    every other Conv2d/Linear module the reason it stays float."""

    binary: List[str] = field(default_factory=list)
    kept_float: Dict[str, str] = field(default_factory=dict)

    def __str__(self):
        lines = [f"binary ({len(self.binary)}): " + ", ".join(self.binary)]
        lines += [f"float  {name}: {why}" for name, why in self.kept_float.items()]
        return "\n".join(lines)


def _is_shortcut_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A 1x1 conv on a shortcut branch (ResNet's downsample): its output, through an optional
    BatchNorm, is added to something, and its input also feeds another convolution."""
    conv = module_of(gm, node)
    if tuple(conv.kernel_size) != (1, 1):
        return False
    out = following_batchnorm(gm, node) or node
    if not any(is_add(u) for u in out.users):
        return False
    source = node.args[0]
    return any(u is not node and isinstance(module_of(gm, u), nn.Conv2d) for u in source.users)


def _excluded_by_name(name: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif pattern == name:
            return True
    return False


def plan_binary_layers(gm: fx.GraphModule, config: ConvertConfig) -> LayerPlan:
    """Choose the Conv2d (and, with ``binarize_linear``, Linear) modules to binarize."""
    from .layers import BinaryLayer

    known = {name for name, _ in gm.named_modules()}
    unknown = [p for p in config.exclude if not p.startswith("re:") and p not in known]
    if unknown:
        raise ValueError(f"exclude: no module named {unknown} in the model")
    candidates = [n for n in gm.graph.nodes
                  if isinstance(module_of(gm, n), (nn.Conv2d, nn.Linear))
                  and not isinstance(module_of(gm, n), BinaryLayer)]
    convs = [n for n in candidates if isinstance(module_of(gm, n), nn.Conv2d)]
    first = convs[0] if convs else None
    last = candidates[-1] if candidates else None

    plan = LayerPlan()
    seen = set()
    for node in candidates:
        name, module = node.target, module_of(gm, node)
        if name in seen:  # a module called more than once: decided at its first call
            continue
        seen.add(name)
        is_conv = isinstance(module, nn.Conv2d)
        if not is_conv and not config.binarize_linear:
            why = "Linear (binarize_linear=False)"
        elif config.keep_first and node is first:
            why = "first convolution (keep_first=True)"
        elif config.keep_last and node is last:
            why = "last layer (keep_last=True)"
        elif is_conv and module.groups != 1:
            why = f"grouped/depthwise convolution (groups={module.groups})"
        elif is_conv and module.padding_mode != "zeros":
            why = f"padding_mode={module.padding_mode!r} (binary layers zero-pad)"
        elif is_conv and config.keep_downsample and _is_shortcut_conv(gm, node):
            why = "1x1 shortcut/downsample convolution (keep_downsample=True)"
        elif _excluded_by_name(name, config.exclude):
            why = "excluded by name (exclude)"
        elif config.exclude_types and isinstance(module, tuple(config.exclude_types)):
            why = "excluded by type (exclude_types)"
        else:
            plan.binary.append(name)
            continue
        plan.kept_float[name] = why
    return plan


# ---------------------------------------------------------------------------- double skips
def _keeps_spatial_size(conv: nn.Conv2d) -> bool:
    """True when the output is ceil(input / stride) in both axes ("same" padding)."""
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))


def _existing_downsample(gm: fx.GraphModule, node: fx.Node, conv: nn.Conv2d,
                         binary: set) -> Optional[fx.Node]:
    """A float 1x1 conv (+BN) branch that reads the same input and gives the same output shape."""
    for user in node.args[0].users:
        other = module_of(gm, user)
        if (user is not node and user.target not in binary and isinstance(other, nn.Conv2d)
                and tuple(other.kernel_size) == (1, 1) and other.groups == 1
                and tuple(other.padding) == (0, 0) and tuple(other.stride) == tuple(conv.stride)
                and other.in_channels == conv.in_channels and other.out_channels == conv.out_channels):
            return following_batchnorm(gm, user) or user
    return None


class ParameterFreeShortcut(nn.Module):
    """A shortcut for a shape-changing binary conv with no weights (ReActNet, Bi-Real style):
    average pooling for the stride, then the channels tiled ``out / in`` times (expansion: output
    channel c is input channel c mod in: exported as a Concat, which ONNX Runtime ran in 1.0 ms on
    MobileNetV2 where an interleaving repeat's Expand took 1.9 ms) or each group
    of ``in / out`` adjacent channels averaged (reduction). Costs a few adds per
    output value where the float 1x1 conv shortcut costs ``in_channels`` MACs."""

    def __init__(self, stride: Tuple[int, int], in_channels: int, out_channels: int):
        super().__init__()
        if out_channels % in_channels and in_channels % out_channels:
            raise ValueError(f"ParameterFreeShortcut: {in_channels} -> {out_channels} channels: one count "
                             f"must divide the other")
        self.pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                     if tuple(stride) != (1, 1) else nn.Identity())
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.out_channels >= self.in_channels:
            return torch.cat([x] * (self.out_channels // self.in_channels), 1)
        return x.unflatten(1, (self.out_channels, self.in_channels // self.out_channels)).mean(2)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


def _conv_shortcut(conv: nn.Conv2d) -> nn.Module:
    """Bi-Real's shortcut for a shape-changing conv: AvgPool + float 1x1 conv + BatchNorm.
    The BatchNorm's weight starts at 0, so the converted network's output is not perturbed by a
    random branch at conversion time; training grows it."""
    stride = tuple(conv.stride)
    pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            if stride != (1, 1) else nn.Identity())
    bn = nn.BatchNorm2d(conv.out_channels)
    nn.init.zeros_(bn.weight)
    return nn.Sequential(pool, nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=False), bn).to(
        device=conv.weight.device, dtype=conv.weight.dtype)


def _channels_divide(conv: nn.Conv2d) -> bool:
    return conv.out_channels % conv.in_channels == 0 or conv.in_channels % conv.out_channels == 0


def _shortcut_kind(conv: nn.Conv2d, shortcut: str) -> str:
    """"free" or "conv": the new shortcut a shape-changing ``conv`` gets with the option ``shortcut``
    (:data:`binarize.config.SHORTCUTS`). "auto" gives the parameter-free one to 1x1 convs only: for
    them a float 1x1 shortcut costs as much as the float layer; a larger kernel keeps Bi-Real's."""
    if shortcut == "conv" or not _channels_divide(conv):
        return "conv"
    if shortcut == "free" or tuple(conv.kernel_size) == (1, 1):
        return "free"
    return "conv"


def _new_shortcut(conv: nn.Conv2d, shortcut: str) -> nn.Module:
    if _shortcut_kind(conv, shortcut) == "free":
        return ParameterFreeShortcut(tuple(conv.stride), conv.in_channels, conv.out_channels)
    return _conv_shortcut(conv)


def _needs_new_shortcut(gm: fx.GraphModule, node: fx.Node, binary: set) -> bool:
    """Whether :func:`add_double_skips` gives the binary conv at ``node`` a new shortcut module (its
    shape changes and no downsample branch of the block fits)."""
    conv = module_of(gm, node)
    return (_keeps_spatial_size(conv)
            and not (tuple(conv.stride) == (1, 1) and conv.in_channels == conv.out_channels)
            and _existing_downsample(gm, node, conv, binary) is None)


#: The binary kernel's cost per output value, in float multiply-adds of ONNX Runtime's float conv (the
#: unit of :func:`keep_costly_layers_float`): a fixed part (the output's epilogue and write, and the
#: packing of its input) and a part per 64-bit word of the packed receptive field (k*k*ceil(C/64)
#: words: channels are packed in 64-bit words, so 24 channels cost what 64 do). Fitted to
#: ``python benchmarks/bench_kernels.py --crossover`` (AVX2 path against ORT float, 1 thread, 1x1 and
#: 3x3 convs of 8-512 input channels; benchmarks/RESULTS.md "Where binary pays"), where it predicts
#: the measured float/binary time ratio within about 30 %. AVX-512 has a cheaper word, so there the
#: rule keeps a few layers float that would have paid a little.
BINARY_FIXED_MACS = 32
BINARY_WORD_MACS = 12
#: A parameter-free shortcut's cost per output value in the same unit, widening (channel Concat) and
#: narrowing (grouped mean: ORT's ReduceMean over a middle axis is slow), from the ORT profile of
#: MobileNetV2 (0.88 ms over 3.4 M Concat outputs, 0.70 ms over 0.54 M ReduceMean outputs; RESULTS.md,
#: same section). Since BinaryConv2d v4 runs both inside the binary op (the exporter), measured there
#: on Zen 3 over a residual of Y's shape (which the rule charges nothing): tiled about 0, group means
#: 27-67 (RESULTS.md, "Parameter-free shortcuts inside BinaryConv2d v4"); a widening charge of 0
#: binarized two more MobileNetV3-small layers and the model was no faster, so both constants stay.
FREE_WIDEN_MACS = 9
FREE_NARROW_MACS = 47


def binary_kernel_macs(taps: int, fan_in: int) -> int:
    """The binary kernel's estimated cost per output value, in float MACs, for a receptive field of
    ``taps`` kernel positions over ``fan_in`` input channels (features)."""
    return BINARY_FIXED_MACS + taps * -(-fan_in // 64) * BINARY_WORD_MACS


@dataclass(frozen=True)
class LayerCost:
    """Per output value of one layer, in float MACs: the float layer, and its binary version with the
    shortcut the double skip would give it (0 for an identity or an existing downsample branch)."""

    float_macs: int
    binary_macs: int
    shortcut_macs: int

    @property
    def binary_pays(self) -> bool:
        return self.binary_macs + self.shortcut_macs < self.float_macs

    def __str__(self) -> str:
        return (f"float {self.float_macs} MACs per output value, binary about {self.binary_macs} + shortcut "
                f"{self.shortcut_macs}")


def layer_cost(gm: fx.GraphModule, node: fx.Node, binary: set, config: ConvertConfig) -> LayerCost:
    """The cost of keeping the Conv2d/Linear at ``node`` float against binarizing it (``config``'s
    ``cost_model``, ``double_skip`` and ``shortcut``). A method that multiplies a layer's work (CBCN's
    K orientations) is charged as one binary layer: the rule asks whether binarizing the layer can pay
    at all, not which method pays."""
    module = module_of(gm, node)
    taps, fan_in = (1, module.in_features) if isinstance(module, nn.Linear) else (
        module.kernel_size[0] * module.kernel_size[1], module.in_channels)
    binary_macs = binary_kernel_macs(taps, fan_in) if config.cost_model == "kernel" else 0
    shortcut_macs = 0
    if config.double_skip and isinstance(module, nn.Conv2d) and _needs_new_shortcut(gm, node, binary):
        kind = _shortcut_kind(module, config.shortcut)
        if kind == "conv":
            shortcut_macs = module.in_channels
        elif config.cost_model == "kernel":
            shortcut_macs = FREE_WIDEN_MACS if module.out_channels >= module.in_channels else FREE_NARROW_MACS
    return LayerCost(taps * fan_in, binary_macs, shortcut_macs)


def keep_costly_layers_float(gm: fx.GraphModule, plan: "LayerPlan", config: ConvertConfig) -> None:
    """Move to float the planned layers whose binary version with its new shortcut would not be faster
    than the float layer (:func:`layer_cost`); the plan says why for each.

    Why: a binary layer exists to be faster and smaller, and below a few dozen input channels per tap
    it is neither faster (the fixed cost per output value dominates) nor much smaller. With
    ``cost_model="shortcut"`` only a new float 1x1 conv shortcut is charged: it costs ``in`` MACs per
    output value, as much as a float 1x1 layer, so such 1x1 convs stay float and nothing else does."""
    binary = set(plan.binary)
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in binary:
            continue
        if config.cost_model == "kernel" and isinstance(module_of(gm, node), nn.Conv2d) and reads_pooled_map(gm, node):
            # One output value per channel and image: the binary op's fixed cost per call (packing,
            # dispatch) dwarfs the float conv's few MACs. MobileNetV3-small ran 0.95x float with them binary.
            binary.discard(node.target)
            plan.kept_float[node.target] = ("reads a globally pooled 1x1 map (a squeeze-excitation conv): a fully "
                                            "connected layer, not faster binary (keep_costly_float=True)")
            continue
        cost = layer_cost(gm, node, binary, config)
        if not cost.binary_pays:
            binary.discard(node.target)
            module = module_of(gm, node)
            shape = (f"{module.in_features} -> {module.out_features} Linear" if isinstance(module, nn.Linear) else
                     f"{module.kernel_size[0]}x{module.kernel_size[1]} conv {module.in_channels} -> "
                     f"{module.out_channels} channels")
            plan.kept_float[node.target] = (f"{shape}: binary would not be faster ({cost}; "
                                            f"keep_costly_float=True, cost_model={config.cost_model!r})")
    plan.binary = [name for name in plan.binary if name in binary]


def add_double_skips(gm: fx.GraphModule, binary: Sequence[str], shortcut: str = "auto") -> List[str]:
    """Give every binary conv (with its BatchNorm) its own shortcut, Bi-Real style:
    identity where shapes match, the block's existing downsample branch where there is one,
    otherwise a new one (:func:`_shortcut_kind`). Returns the names of the modules added."""
    binary_set = set(binary)
    added = []
    for node in list(gm.graph.nodes):
        conv = module_of(gm, node)
        if node.target not in binary_set or not isinstance(conv, nn.Conv2d):
            continue
        if not _keeps_spatial_size(conv):
            warnings.warn(f"no double skip around '{node.target}': padding {conv.padding} does not keep "
                          f"the spatial size for kernel {conv.kernel_size}, so no shortcut can match it")
            continue
        source = node.args[0]
        out = following_batchnorm(gm, node) or node
        if tuple(conv.stride) == (1, 1) and conv.in_channels == conv.out_channels:
            skip = source
        else:
            skip = _existing_downsample(gm, node, conv, binary_set)
            if skip is None:
                name = node.target.replace(".", "_") + "_skip"
                gm.add_submodule(name, _new_shortcut(conv, shortcut))
                added.append(name)
                with gm.graph.inserting_after(source):
                    skip = tag(gm.graph.call_module(name, (source,)), "double_skip")
        with gm.graph.inserting_after(out):
            summed = tag(gm.graph.call_function(operator.add, (out, skip)), "double_skip_add")
        out.replace_all_uses_with(summed, delete_user_cb=lambda user: user is not summed)
    topological_sort(gm.graph)
    return added


# -------------------------------------------------------------------------- sign inputs
def _sign_input_activation(kind: str) -> Optional[nn.Module]:
    if kind == "hardtanh":
        return nn.Hardtanh()
    if kind == "prelu":
        return nn.PReLU(init=0.25)
    return None  # "identity": the binary layer reads the pre-activation value


def rewrite_sign_inputs(gm: fx.GraphModule, binary: Sequence[str], activation: str) -> List[str]:
    """Replace the ReLU-like activation in front of every binary layer (possibly behind pooling,
    dropout or flatten) by ``activation``, for the binary layer only: the activation's other
    consumers (float layers, shortcuts) keep the original. Returns the names of added modules.

    When everything between the ReLU and the binary layer commutes with it (max-pooling, flatten,
    reshape) the ReLU moves behind those ops for the float consumers instead of the ops being
    cloned for the binary layer: relu(maxpool(z)) == maxpool(relu(z)), and the pooling then runs
    once (ResNet's stem, VGG, LeNet)."""
    binary_set = set(binary)
    rewritten: Dict[fx.Node, fx.Node] = {}  # original input node -> new input node
    added = []

    def sign_input(value: fx.Node, relu: fx.Node) -> fx.Node:
        module = _sign_input_activation(activation)
        if module is None:
            return value
        name = f"{relu.name}_sign_input"
        gm.add_submodule(name, module)
        added.append(name)
        with gm.graph.inserting_after(value):
            return tag(gm.graph.call_module(name, (value,)), "sign_input")

    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in binary_set:
            continue
        original = node.args[0]
        if original not in rewritten:
            chain, cursor = [], original
            while is_pass_through(gm, cursor) and cursor.args and isinstance(cursor.args[0], fx.Node):
                chain.append(cursor)
                cursor = cursor.args[0]
            if not is_relu_like(gm, cursor):
                continue
            pre_activation = cursor.args[0]
            single_path = all(len(n.users) == 1 for n in [cursor, *chain[1:]])
            if chain and single_path and all(commutes_with_relu(gm, n) for n in chain):
                chain[-1].replace_input_with(cursor, pre_activation)  # the ops now read z
                with gm.graph.inserting_after(original):
                    float_value = tag(gm.graph.node_copy(cursor, lambda n: original if n is pre_activation else n),
                                      "moved_relu")
                new = sign_input(original, cursor)
                original.replace_all_uses_with(float_value, delete_user_cb=lambda user: user not in (
                    float_value, new) and not (user.op == "call_module" and user.target in binary_set))
            else:
                new = sign_input(pre_activation, cursor)
                for step in reversed(chain):  # clone the pass-through ops on the new value
                    with gm.graph.inserting_after(new):
                        copied = gm.graph.node_copy(step, lambda n, step=step, new=new: new if n is step.args[0] else n)
                    new = tag(copied, "sign_input_copy")
            rewritten[original] = new
        node.replace_input_with(original, rewritten[original])
    gm.graph.eliminate_dead_code()
    topological_sort(gm.graph)
    return added


# ------------------------------------------------------------------------------------ swap
def swap_binary_layers(gm: fx.GraphModule, binary: Sequence[str], method, config: ConvertConfig) -> None:
    """Replace each planned module by ``method``'s binary layer, built from its float weights, and
    tag every call of one with the BatchNorm after it (:func:`binarize.matchers.following_batchnorm`)."""
    for name in binary:
        old = gm.get_submodule(name)
        new = method.conv(old, config) if isinstance(old, nn.Conv2d) else method.linear(old, config)
        new.train(old.training)
        parent_name, _, child = name.rpartition(".")
        setattr(gm.get_submodule(parent_name) if parent_name else gm, child, new)
    binary_set = set(binary)
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in binary_set:
            bn = following_batchnorm(gm, node)
            tag(node, "binary_layer", batchnorm=bn.target if bn is not None else None)


# --------------------------------------------------------------------------------- RPReLU
def add_rprelus(gm: fx.GraphModule, binary: Sequence[str]) -> List[str]:
    """Put an :class:`~binarize.layers.RPReLU` (identity at first) after each binary layer's
    BatchNorm (after the layer where none follows), in front of everything that read it (the
    double skip's addition included). Returns the names of the modules added."""
    binary_set = set(binary)
    added = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in binary_set:
            continue
        layer = gm.get_submodule(node.target)
        conv = isinstance(layer, nn.Conv2d)
        channels, axis = (layer.out_channels, 1) if conv else (layer.out_features, -1)
        out = following_batchnorm(gm, node) or node
        name = node.target.replace(".", "_") + "_rprelu"
        gm.add_submodule(name, RPReLU(channels, axis).to(layer.weight.device))
        added.append(name)
        with gm.graph.inserting_after(out):
            new = tag(gm.graph.call_module(name, (out,)), "rprelu")
        out.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    topological_sort(gm.graph)
    return added


# ------------------------------------------------------------------------- topological sort
def topological_sort(graph: fx.Graph) -> None:
    """Reorder nodes so every node follows its inputs, keeping the existing order where it is
    already valid (passes insert edges to nodes that appear later, e.g. a downsample branch)."""
    order, placed = [], set()
    for start in list(graph.nodes):
        stack = [(start, False)]
        while stack:
            node, inputs_done = stack.pop()
            if node in placed:
                continue
            if inputs_done:
                placed.add(node)
                order.append(node)
                continue
            stack.append((node, True))
            for dep in reversed(node.all_input_nodes):
                if dep not in placed:
                    stack.append((dep, False))
    for before, after in zip(order, order[1:]):
        before.append(after)
    graph.lint()
