"""ONNX operator schemas of the ``binarize`` domain, version 1 (kernels/SPEC.md is the op spec).

Registering them with :func:`register_schemas` lets ``onnx.checker.check_model(full_check=True)``
and ``onnx.shape_inference.infer_shapes`` understand exported models: both ops get a type and
shape inference function, so the shapes of everything downstream of a binary layer infer too.
ONNX Runtime does not need these schemas; it learns the ops from the kernel library.
"""
from __future__ import annotations

from typing import List, Optional

import onnx
from onnx import TensorProto, defs
from onnx.shape_inference import InferenceContext

DOMAIN = "binarize"
VERSION = 1

__all__ = ["DOMAIN", "VERSION", "register_schemas", "conv_output_size"]

_FLOAT = "tensor(float)"
_PACKED = "tensor(int64)"


def conv_output_size(size: int, pad_begin: int, pad_end: int, kernel: int, stride: int, dilation: int) -> int:
    """Output length of a convolution along one spatial axis (as ONNX Conv, floor rounding)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _int_attribute(ctx: InferenceContext, name: str, default: Optional[int] = None) -> Optional[int]:
    attribute = ctx.get_attribute(name)
    return default if attribute is None else attribute.i


def _ints_attribute(ctx: InferenceContext, name: str, default: Optional[List[int]] = None) -> Optional[List[int]]:
    attribute = ctx.get_attribute(name)
    return default if attribute is None else list(attribute.ints)


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


def _infer_binary_conv2d(ctx: InferenceContext) -> None:
    """Y = [N, M, OH, OW]: N from X, M from W, OH/OW from X's spatial size and the attributes."""
    kernel = _ints_attribute(ctx, "kernel_shape")
    strides = _ints_attribute(ctx, "strides", [1, 1])
    pads = _ints_attribute(ctx, "pads", [0, 0, 0, 0])
    dilations = _ints_attribute(ctx, "dilations", [1, 1])
    if kernel is None or len(kernel) != 2 or min(kernel) < 1:
        raise ValueError(f"BinaryConv2d: attribute kernel_shape must be 2 positive values, got {kernel}")
    if len(strides) != 2 or min(strides) < 1 or len(dilations) != 2 or min(dilations) < 1:
        raise ValueError(f"BinaryConv2d: strides {strides} and dilations {dilations} must be 2 positive values each")
    if len(pads) != 4 or min(pads) < 0:
        raise ValueError(f"BinaryConv2d: attribute pads must be 4 non-negative values "
                         f"[top, left, bottom, right], got {pads}")
    x, w = _dims(ctx, 0), _dims(ctx, 1)
    if x is None:
        _set_float_output(ctx, None)
        return
    if len(x) != 4:
        raise ValueError(f"BinaryConv2d: X must have rank 4 [N, C, H, W], got rank {len(x)}")
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


def _infer_binary_linear(ctx: InferenceContext) -> None:
    """Y = X's shape with the last axis replaced by M (W's first axis)."""
    x, w = _dims(ctx, 0), _dims(ctx, 1)
    if x is None:
        _set_float_output(ctx, None)
        return
    out_features = w[0] if w is not None and len(w) == 2 else onnx.TensorShapeProto.Dimension()
    _set_float_output(ctx, [*x[:-1], out_features])


def _parameter(name: str, type_str: str, doc: str) -> defs.OpSchema.FormalParameter:
    return defs.OpSchema.FormalParameter(name, type_str, doc)


_OUTPUT_TRANSFORM = [
    _parameter("multiplier", _FLOAT, "[M] per-output-channel scale (the method's alpha / C* / mean|w|, "
                                     "times a folded BatchNorm's gamma / sqrt(var + eps))"),
    _parameter("bias", _FLOAT, "[M] per-output-channel bias (the layer's bias and a folded BatchNorm's shift)"),
]


def _conv_schema() -> defs.OpSchema:
    ints = defs.OpSchema.AttrType.INTS
    schema = defs.OpSchema(
        "BinaryConv2d", DOMAIN, VERSION,
        "Y = multiplier * D + bias, D = the zero-padded correlation of sign(X) (sign(0) = +1) with "
        "the packed +-1 weights; padded taps contribute 0.",
        inputs=[_parameter("X", _FLOAT, "[N, C, H, W] float input, binarized inside the op"),
                _parameter("W", _PACKED, "[M, KH, KW, ceil(C/64)] signs packed along C, bit 1 = -1"),
                *_OUTPUT_TRANSFORM],
        outputs=[_parameter("Y", _FLOAT, "[N, M, OH, OW]")],
        attributes=[
            defs.OpSchema.Attribute("kernel_shape", ints, "[KH, KW]", required=True),
            defs.OpSchema.Attribute("in_channels", defs.OpSchema.AttrType.INT, "C", required=True),
            defs.OpSchema.Attribute("strides", ints, "[stride_h, stride_w], default [1, 1]", required=False),
            defs.OpSchema.Attribute("pads", ints, "[top, left, bottom, right], default 0", required=False),
            defs.OpSchema.Attribute("dilations", ints, "[dilation_h, dilation_w], default [1, 1]", required=False),
            defs.OpSchema.Attribute("group", defs.OpSchema.AttrType.INT, "1 (version 1)", required=False),
        ])
    schema.set_type_and_shape_inference_function(_infer_binary_conv2d)
    return schema


def _linear_schema() -> defs.OpSchema:
    schema = defs.OpSchema(
        "BinaryLinear", DOMAIN, VERSION,
        "Y = multiplier * (sign(X) . W^T) + bias over the last axis of X (sign(0) = +1).",
        inputs=[_parameter("X", _FLOAT, "[..., K] float input, binarized inside the op"),
                _parameter("W", _PACKED, "[M, ceil(K/64)] signs packed along K, bit 1 = -1"),
                *_OUTPUT_TRANSFORM],
        outputs=[_parameter("Y", _FLOAT, "[..., M]")],
        attributes=[defs.OpSchema.Attribute("in_features", defs.OpSchema.AttrType.INT, "K", required=True)])
    schema.set_type_and_shape_inference_function(_infer_binary_linear)
    return schema


def register_schemas() -> None:
    """Register BinaryConv2d and BinaryLinear with ONNX (once per process; later calls do nothing)."""
    for schema in (_conv_schema(), _linear_schema()):
        if not defs.has(schema.name, VERSION, DOMAIN):
            defs.register_schema(schema)
