"""The inference form of binary layers: PyTorch custom ops that the ONNX exporter maps to the
``binarize`` domain's BinaryConv2d / BinaryLinear (binarize/opset.py), and the modules that call them.

A :class:`PackedBinaryConv2d` holds what the runtime needs and nothing else: the signs packed
into int64 words (once, when it is built), one multiplier and one bias per packed output channel.
Its custom op ``torch.ops.binarize.binary_conv2d`` has an eager implementation that computes
exactly what the kernel computes (``multiplier * D + bias`` with the integer dot product D of the
signs), so a prepared model can also be run in PyTorch, and a fake kernel for ``torch.export``.
:data:`ONNX_TRANSLATIONS` is the ``custom_translation_table`` for ``torch.onnx.export``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnxscript
import torch
import torch.nn.functional as F
from torch import nn

from binarize.opset import BINARY_CONV2D_V1, BINARY_LINEAR_V1, conv_output_size
from binarize.packing import pack_weight, packed_words, unpack_bits
from binarize.quantizers import binary_sign

__all__ = ["PackedBinaryConv2d", "PackedBinaryLinear", "ONNX_TRANSLATIONS"]


def _unpack(packed: torch.Tensor, length: int) -> torch.Tensor:
    """int64 words packed along the last axis -> float ±1 signs, the packed axis last."""
    signs = unpack_bits(packed.detach().cpu().numpy(), length, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(signs)).to(packed.device)


# ------------------------------------------------------------------------------ custom ops
@torch.library.custom_op(BINARY_CONV2D_V1.torch_op, mutates_args=())
def binary_conv2d(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                  in_channels: int, kernel_shape: List[int], strides: List[int], pads: List[int],
                  dilations: List[int]) -> torch.Tensor:
    """BinaryConv2d v1 (kernels/ops/): ``multiplier * D + bias``, D the zero-padded correlation of
    sign(x) with the packed signs ``weight`` [M, KH, KW, ceil(C/64)]; pads are [top, left, bottom, right]."""
    signs = _unpack(weight, in_channels).permute(0, 3, 1, 2)  # [M, KH, KW, C] -> [M, C, KH, KW]
    top, left, bottom, right = pads
    x_signs = F.pad(binary_sign(x.float()), (left, right, top, bottom))  # zero padding after binarizing
    # The products are ±1 and the sums integers below 2^24: exact in float32, as the kernel's integers.
    dot = F.conv2d(x_signs, signs, None, strides, 0, dilations)
    return dot * multiplier.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


@binary_conv2d.register_fake
def _binary_conv2d_fake(x, weight, multiplier, bias, in_channels, kernel_shape, strides, pads, dilations):
    height, width = (conv_output_size(x.shape[2 + axis], pads[axis], pads[2 + axis], kernel_shape[axis],
                                      strides[axis], dilations[axis]) for axis in range(2))
    return x.new_empty((x.shape[0], weight.shape[0], height, width))


@torch.library.custom_op(BINARY_LINEAR_V1.torch_op, mutates_args=())
def binary_linear(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                  in_features: int) -> torch.Tensor:
    """BinaryLinear v1 (kernels/ops/): ``multiplier * (sign(x) . signs^T) + bias`` over x's last axis."""
    dot = F.linear(binary_sign(x.float()), _unpack(weight, in_features))
    return dot * multiplier + bias


@binary_linear.register_fake
def _binary_linear_fake(x, weight, multiplier, bias, in_features):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _onnx_op(op):  # the onnxscript callable that emits a node of the operator version ``op``
    return getattr(onnxscript.values.Opset(op.domain, op.version), op.name)


def _binary_conv2d_onnx(x, weight, multiplier, bias, in_channels: int, kernel_shape: Sequence[int],
                        strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int]):
    return _onnx_op(BINARY_CONV2D_V1)(x, weight, multiplier, bias, in_channels=in_channels,
                                      kernel_shape=list(kernel_shape), strides=list(strides), pads=list(pads),
                                      dilations=list(dilations), group=1)


def _binary_linear_onnx(x, weight, multiplier, bias, in_features: int):
    return _onnx_op(BINARY_LINEAR_V1)(x, weight, multiplier, bias, in_features=in_features)


#: ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``.
ONNX_TRANSLATIONS = {
    torch.ops.binarize.binary_conv2d.default: _binary_conv2d_onnx,
    torch.ops.binarize.binary_linear.default: _binary_linear_onnx,
}


# ----------------------------------------------------------------------------------- modules
def _as_float32(values: torch.Tensor) -> torch.Tensor:
    return values.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_per_channel(name: str, what: str, values: torch.Tensor, channels: int) -> None:
    if values.shape != (channels,):
        raise ValueError(f"'{name}': {what} has shape {tuple(values.shape)}, expected ({channels},), "
                         f"one value per packed output channel")


class PackedBinaryConv2d(nn.Module):
    """A binary conv for inference: BinaryConv2d with ``orientations * out_channels`` packed outputs,
    then (``orientations > 1``, CBCN) a max over the orientations and the layer's bias.

    ``signs`` is [orientations * out_channels, C, KH, KW] in {-1, +1}; ``multiplier`` and ``bias``
    have one value per packed output channel and are applied before the max, ``post_bias`` (one
    per output channel, optional) after it.
    """

    def __init__(self, name: str, signs: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                 stride: Tuple[int, int], pads: Tuple[int, int, int, int], dilation: Tuple[int, int],
                 orientations: int = 1, post_bias: Optional[torch.Tensor] = None):
        super().__init__()
        packed_channels, in_channels, kernel_h, kernel_w = signs.shape
        if packed_channels % orientations:
            raise ValueError(f"'{name}': {packed_channels} packed output channels are not a multiple of "
                             f"orientations={orientations}")
        _check_per_channel(name, "multiplier", multiplier, packed_channels)
        _check_per_channel(name, "bias", bias, packed_channels)
        self.in_channels = in_channels
        self.out_channels = packed_channels // orientations
        self.kernel_shape = [kernel_h, kernel_w]
        self.strides, self.pads, self.dilations = list(stride), list(pads), list(dilation)
        self.orientations = orientations
        self.register_buffer("weight", torch.from_numpy(pack_weight(signs)))
        self.register_buffer("multiplier", _as_float32(multiplier))
        self.register_buffer("bias", _as_float32(bias))
        if post_bias is not None:
            _check_per_channel(name, "bias", post_bias, self.out_channels)
            post_bias = _as_float32(post_bias).view(1, -1, 1, 1)
        self.register_buffer("post_bias", post_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = binary_conv2d(x, self.weight, self.multiplier, self.bias, self.in_channels, self.kernel_shape,
                          self.strides, self.pads, self.dilations)
        if self.orientations > 1:
            y = y.unflatten(1, (self.orientations, self.out_channels)).amax(1)
        if self.post_bias is not None:
            y = y + self.post_bias
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_shape={self.kernel_shape}, "
                f"strides={self.strides}, pads={self.pads}, dilations={self.dilations}, "
                f"orientations={self.orientations}, packed_words={packed_words(self.in_channels)}")


class PackedBinaryLinear(nn.Module):
    """A binary Linear for inference: BinaryLinear with packed signs [M, K], multiplier and bias [M]."""

    def __init__(self, name: str, signs: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        out_features, self.in_features = signs.shape
        _check_per_channel(name, "multiplier", multiplier, out_features)
        _check_per_channel(name, "bias", bias, out_features)
        self.out_features = out_features
        self.register_buffer("weight", torch.from_numpy(pack_weight(signs)))
        self.register_buffer("multiplier", _as_float32(multiplier))
        self.register_buffer("bias", _as_float32(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binary_linear(x, self.weight, self.multiplier, self.bias, self.in_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"
