"""ONNX operator schemas of the ``binarize`` domain, built from the definitions in
:mod:`binarize.opset` (one schema per operator version; the operator pages are ``kernels/ops/``).

Registering them with :func:`register_schemas` lets ``onnx.checker.check_model(full_check=True)``
and ``onnx.shape_inference.infer_shapes`` understand exported models: both ops get a type and
shape inference function, so the shapes of everything downstream of a binary layer infer too.
ONNX Runtime does not need these schemas; it learns the ops from the kernel library.
"""
from __future__ import annotations

from typing import Dict, Optional

import onnx
from onnx import TensorProto, defs
from onnx.shape_inference import InferenceContext

from binarize.opset import DOMAIN, LATEST_VERSION, OPS, OpDefinition, conv_output_size

#: The ``binarize`` opset version new exports import.
VERSION = LATEST_VERSION

__all__ = ["DOMAIN", "VERSION", "register_schemas", "conv_output_size"]

_TYPE_STRINGS = {"float32": "tensor(float)", "int64": "tensor(int64)"}
_ATTRIBUTE_TYPES = {"int": defs.OpSchema.AttrType.INT, "ints": defs.OpSchema.AttrType.INTS}


def _attributes(op: OpDefinition, ctx: InferenceContext) -> Dict[str, object]:
    """The node's attributes, validated by the definition (ValueError naming op and attribute)."""
    values = {}
    for attribute in op.attributes:
        proto = ctx.get_attribute(attribute.name)
        if proto is not None:
            values[attribute.name] = onnx.helper.get_attribute_value(proto)
    return op.validate_attributes(values)


def _dims(ctx: InferenceContext, index: int) -> Optional[list]:
    """The dims of input ``index`` (TensorShapeProto.Dimension), or None when its rank is unknown."""
    tensor_type = ctx.get_input_type(index).tensor_type
    return list(tensor_type.shape.dim) if tensor_type.HasField("shape") else None


def _set_float_output(ctx: InferenceContext, dims: Optional[list]) -> None:
    output = onnx.TypeProto()
    output.tensor_type.elem_type = TensorProto.FLOAT
    if dims is not None:
        shape = output.tensor_type.shape
        shape.SetInParent()  # rank known even when every dim is unknown
        for dim in dims:
            shape.dim.add().CopyFrom(dim)
    ctx.set_output_type(0, output)


def _known(value: int) -> onnx.TensorShapeProto.Dimension:
    dim = onnx.TensorShapeProto.Dimension()
    dim.dim_value = value
    return dim


def _infer_binary_conv2d(op: OpDefinition, ctx: InferenceContext) -> None:
    """Y = [N, M, OH, OW]: N from X, M from W, OH/OW from X's spatial size and the attributes."""
    attributes = _attributes(op, ctx)
    kernel, strides = attributes["kernel_shape"], attributes["strides"]
    pads, dilations = attributes["pads"], attributes["dilations"]
    x, w = _dims(ctx, 0), _dims(ctx, 1)
    if x is None:
        _set_float_output(ctx, None)
        return
    if len(x) != 4:
        raise ValueError(f"{op.name}: X must have rank 4 [N, C, H, W], got rank {len(x)}")
    out_channels = w[0] if w is not None and len(w) == 4 else onnx.TensorShapeProto.Dimension()
    spatial = []
    for axis in range(2):
        dim = x[2 + axis]
        if dim.HasField("dim_value"):
            spatial.append(_known(conv_output_size(dim.dim_value, pads[axis], pads[2 + axis], kernel[axis],
                                                   strides[axis], dilations[axis])))
        else:
            spatial.append(onnx.TensorShapeProto.Dimension())
    _set_float_output(ctx, [x[0], out_channels, *spatial])


def _infer_binary_linear(op: OpDefinition, ctx: InferenceContext) -> None:
    """Y = X's shape with the last axis replaced by M (W's first axis)."""
    _attributes(op, ctx)
    x, w = _dims(ctx, 0), _dims(ctx, 1)
    if x is None:
        _set_float_output(ctx, None)
        return
    out_features = w[0] if w is not None and len(w) == 2 else onnx.TensorShapeProto.Dimension()
    _set_float_output(ctx, [*x[:-1], out_features])


_SHAPE_INFERENCE = {"BinaryConv2d": _infer_binary_conv2d, "BinaryLinear": _infer_binary_linear}


def _parameters(parameters) -> list:
    option = defs.OpSchema.FormalParameterOption
    return [defs.OpSchema.FormalParameter(p.name, _TYPE_STRINGS[p.dtype], f"{p.shape} {p.doc}",
                                          param_option=option.Optional if p.optional else option.Single)
            for p in parameters]


def schema(op: OpDefinition) -> defs.OpSchema:
    """The ONNX schema of one operator version."""
    result = defs.OpSchema(
        op.name, op.domain, op.version, op.summary, inputs=_parameters(op.inputs), outputs=_parameters(op.outputs),
        attributes=[defs.OpSchema.Attribute(a.name, _ATTRIBUTE_TYPES[a.type], a.doc, required=a.required)
                    for a in op.attributes])
    infer = _SHAPE_INFERENCE[op.name]
    result.set_type_and_shape_inference_function(lambda ctx: infer(op, ctx))
    return result


def register_schemas() -> None:
    """Register every operator version with ONNX (once per process; later calls do nothing)."""
    for op in OPS:
        # (defs.has is true once any version <= op.version is registered: compare since_version.)
        if not defs.has(op.name, op.version, op.domain) or \
                defs.get_schema(op.name, op.version, op.domain).since_version != op.version:
            defs.register_schema(schema(op))
