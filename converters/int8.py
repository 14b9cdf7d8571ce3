"""The layers that stay float, in int8: QDQ quantization of an exported model's standard ``Conv`` nodes.

A binarized network keeps some convolutions in float (the stem, ResNet's 1x1 downsample convs,
depthwise convs): on ResNet-18 they take as long as all 16 binary convs. ONNX Runtime runs them in
int8 when the file marks them the way its own static quantizer does (QDQ format):

    x -> QuantizeLinear -> DequantizeLinear -+
    W_int8 -> DequantizeLinear (per channel) -+-> Conv -> QuantizeLinear -> DequantizeLinear -> y
    B_int32 -> DequantizeLinear --------------+

ONNX Runtime's graph optimizer fuses each such group into one ``QLinearConv`` (``uint8`` activations,
``int8`` per-output-channel weights, ``int32`` bias with scale ``x_scale * w_scale``). ONNX Runtime's
own ``quantize_static`` cannot calibrate these files (its calibration session does not load the
binarize op library), so the ranges come from running the exported model itself on the user's
calibration batches: the minimum and maximum of every quantized tensor, widened to include 0.
Binary layers and everything else are left as they are.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

#: Standard ONNX domains a float Conv node may carry.
_ONNX_DOMAINS = ("", "ai.onnx")


def _float_convs(graph: onnx.GraphProto) -> List[onnx.NodeProto]:
    """The standard Conv nodes whose weight (and bias) are initializers: the ones a QDQ pair can wrap."""
    initializers = {i.name for i in graph.initializer}
    return [node for node in graph.node if node.op_type == "Conv" and node.domain in _ONNX_DOMAINS
            and len(node.input) >= 2 and node.input[1] in initializers
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in initializers)]


def _tensor_ranges(proto: onnx.ModelProto, names: List[str], calibration: Iterable) -> Dict[str, Tuple[float, float]]:
    """(min, max) of each tensor ``names`` over the calibration batches, from the model itself."""
    from binarize.runtime import session

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in outputs)
    runner = session(probe.SerializeToString())
    input_name = runner.get_inputs()[0].name
    order = [o.name for o in runner.get_outputs()]
    ranges: Dict[str, Tuple[float, float]] = {}
    batches = 0
    for batch in calibration:
        array = batch.detach().cpu().float().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch, np.float32)
        values = dict(zip(order, runner.run(None, {input_name: array})))
        for name in names:
            low, high = float(values[name].min()), float(values[name].max())
            old = ranges.get(name, (low, high))
            ranges[name] = (min(old[0], low), max(old[1], high))
        batches += 1
    if not batches:
        raise ValueError("export: calibration= gave no batches; pass a few batches of typical inputs "
                         "(e.g. [x for x, _ in itertools.islice(train_loader, 8)])")
    return ranges


def _uint8_parameters(low: float, high: float) -> Tuple[float, int]:
    """Asymmetric uint8 scale and zero point of the range [low, high] widened to include 0."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0 or 1.0
    return scale, int(np.clip(round(-low / scale), 0, 255))


class _Builder:
    """New nodes and initializers, with one QuantizeLinear/DequantizeLinear pair per activation."""

    def __init__(self, ranges: Dict[str, Tuple[float, float]]):
        self.ranges = ranges
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.dequantized: Dict[str, str] = {}

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def qdq(self, name: str, source: str, target: str) -> None:
        """``target`` = DequantizeLinear(QuantizeLinear(``source``)) with ``name``'s calibrated range."""
        scale, zero_point = _uint8_parameters(*self.ranges[name])
        s = self.constant(f"{name}_int8_scale", np.array(scale, np.float32))
        z = self.constant(f"{name}_int8_zero_point", np.array(zero_point, np.uint8))
        self.nodes.append(helper.make_node("QuantizeLinear", [source, s, z], [f"{name}_int8"], name=f"{name}_quantize"))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", s, z], [target], name=f"{name}_dequantize"))

    def activation(self, name: str) -> str:
        """The dequantized copy of activation ``name`` (made once, shared by every Conv reading it)."""
        if name not in self.dequantized:
            self.dequantized[name] = f"{name}_dequantized"
            self.qdq(name, name, self.dequantized[name])
        return self.dequantized[name]


def quantize_float_convs(proto: onnx.ModelProto, calibration: Iterable) -> Tuple[onnx.ModelProto, int]:
    """``proto`` with its float Conv nodes in QDQ int8 form (module docstring), and how many were
    quantized. ``calibration``: input batches (tensors or arrays) for the single model input."""
    graph = proto.graph
    convs = _float_convs(graph)
    if not convs:
        return proto, 0
    ranges = _tensor_ranges(proto, sorted({n.input[0] for n in convs} | {n.output[0] for n in convs}), calibration)
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    build = _Builder(ranges)
    quantized = {id(node) for node in convs}
    replaced_initializers = set()
    for node in graph.node:
        if id(node) not in quantized:
            build.nodes.append(node)
            continue
        x_name, w_name = node.input[0], node.input[1]
        w = weights[w_name].astype(np.float64)
        w_scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127.0
        w_scale[w_scale == 0] = 1.0
        w_int8 = np.clip(np.round(w / w_scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
        inputs = [build.activation(x_name), f"{w_name}_dequantized"]
        ws = build.constant(f"{w_name}_int8_scale", w_scale.astype(np.float32))
        build.nodes.append(helper.make_node(
            "DequantizeLinear", [build.constant(f"{w_name}_int8", w_int8), ws,
                                 build.constant(f"{w_name}_int8_zero_point", np.zeros(w.shape[0], np.int8))],
            [inputs[1]], name=f"{w_name}_dequantize", axis=0))
        replaced_initializers.add(w_name)
        if len(node.input) > 2 and node.input[2]:
            b_name = node.input[2]
            b_scale = _uint8_parameters(*ranges[x_name])[0] * w_scale.astype(np.float32)
            b_int32 = np.round(weights[b_name].astype(np.float64) / b_scale).astype(np.int32)
            inputs.append(f"{b_name}_dequantized")
            build.nodes.append(helper.make_node(
                "DequantizeLinear", [build.constant(f"{b_name}_int32", b_int32),
                                     build.constant(f"{b_name}_int32_scale", b_scale.astype(np.float32)),
                                     build.constant(f"{b_name}_int32_zero_point", np.zeros(w.shape[0], np.int32))],
                [inputs[2]], name=f"{b_name}_dequantize", axis=0))
            replaced_initializers.add(b_name)
        y_name = node.output[0]
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        del conv.input[:]
        conv.input.extend(inputs)
        conv.output[0] = f"{y_name}_float"
        build.nodes.append(conv)
        build.qdq(y_name, conv.output[0], y_name)

    still_used = {name for n in build.nodes for name in n.input}
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    del result.graph.node[:]
    result.graph.node.extend(build.nodes)
    kept = [i for i in proto.graph.initializer if i.name not in replaced_initializers or i.name in still_used]
    del result.graph.initializer[:]
    result.graph.initializer.extend(kept + build.initializers)
    return result, len(convs)
