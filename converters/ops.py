"""The inference form of binary layers: PyTorch custom ops that the ONNX exporter maps to the
``binarize`` domain's BinaryConv2d / BinaryLinear (binarize/opset.py), and the modules that call them.

A :class:`PackedBinaryConv2d` holds what the runtime needs and nothing else: the signs packed
into int64 words (once, when it is built), one multiplier and one bias per packed output channel.
Its custom op ``torch.ops.binarize.binary_conv2d`` (``binary_conv2d_v2`` with the version-2 inputs:
a threshold per input channel, a residual added in the epilogue; ``binary_conv2d_v3`` with a second
residual and a ReLU on either; ``binary_conv2d_v4`` with a residual of another channel count, tiled or
averaged in groups, and an activation of the result) has an eager implementation that computes
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

from binarize.opset import (BINARY_CONV2D_V1, BINARY_CONV2D_V2, BINARY_CONV2D_V3, BINARY_CONV2D_V4, BINARY_LINEAR_V1,
                            BINARY_LINEAR_V2, BINARY_LINEAR_V3, conv_output_size)
from binarize.packing import pack_weight, packed_words, unpack_bits
from binarize.quantizers import binary_sign

__all__ = ["PackedBinaryConv2d", "PackedBinaryLinear", "ONNX_TRANSLATIONS"]


def _unpack(packed: torch.Tensor, length: int) -> torch.Tensor:
    """int64 words packed along the last axis -> float ±1 signs, the packed axis last."""
    signs = unpack_bits(packed.detach().cpu().numpy(), length, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(signs)).to(packed.device)


# ------------------------------------------------------------------------------ custom ops
def _signs_of_input(x: torch.Tensor, threshold: Optional[torch.Tensor], axis: int) -> torch.Tensor:
    """sign(x - threshold) with sign(0) = +1, the difference in float32 as in the kernels;
    ``threshold`` (one value per entry of ``axis``) None means 0, i.e. sign(x) (version 1)."""
    x = x.float()
    if threshold is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        x = x - threshold.float().view(shape)
    return binary_sign(x)


def _add_residuals(y: torch.Tensor, residuals: Sequence[Optional[torch.Tensor]],
                   residual_relu: Sequence[int] = (0, 0)) -> torch.Tensor:
    """``((y + f0(R0)) + f1(R1))`` in this order, an absent residual not added; ``fk(r) = (r < 0 ? 0 :
    r)`` (a ReLU that keeps NaN, as the kernels) where ``residual_relu[k]``, else r (versions 2 and 3)."""
    for residual, relu in zip(residuals, residual_relu):
        if residual is not None:
            y = y + (torch.where(residual < 0, torch.zeros_like(residual), residual) if relu else residual)
    return y


def _residual_of_channels(residual: torch.Tensor, channels: int, relu: int) -> torch.Tensor:
    """Version 4's residual with ``channels`` channels, through its ReLU first where ``relu``: tiled
    (channel m is channel m mod C_r) or, with more channels, adjacent groups of g = C_r / channels
    summed in float32 in order and divided by g, as the kernels compute it."""
    if relu:
        residual = torch.where(residual < 0, torch.zeros_like(residual), residual)
    if residual.shape[1] <= channels:
        return residual.repeat(1, channels // residual.shape[1], 1, 1)
    groups = residual.unflatten(1, (channels, residual.shape[1] // channels))
    total = groups[:, :, 0]
    for i in range(1, groups.shape[2]):
        total = total + groups[:, :, i]
    return total / groups.shape[2]


def _activated(y: torch.Tensor, activation: int) -> torch.Tensor:
    """Version 4's ``activation`` of Y in float32 as the kernels compute it (1 ReLU, 2 ReLU6, 3 HardSwish;
    NaN passes through)."""
    zero = torch.zeros_like(y)
    if activation == 1:
        return torch.where(y < 0, zero, y)
    if activation == 2:
        return torch.where(y < 0, zero, torch.where(y > 6, torch.full_like(y, 6.0), y))
    if activation == 3:
        gate = y * (1.0 / 6.0) + 0.5
        return y * torch.where(gate < 0, zero, torch.where(gate > 1, torch.ones_like(y), gate))
    return y


def _conv_reference(x, weight, multiplier, bias, threshold, residuals, in_channels, strides, pads, dilations,
                    residual_relu=(0, 0), activation=0):
    signs = _unpack(weight, in_channels).permute(0, 3, 1, 2)  # [M, KH, KW, C] -> [M, C, KH, KW]
    top, left, bottom, right = pads
    x_signs = F.pad(_signs_of_input(x, threshold, 1), (left, right, top, bottom))  # zero padding after binarizing
    # The products are ±1 and the sums integers below 2^24: exact in float32, as the kernel's integers.
    dot = F.conv2d(x_signs, signs, None, strides, 0, dilations)
    residuals, residual_relu = list(residuals), list(residual_relu)
    if residuals and residuals[0] is not None and residuals[0].shape[1] != dot.shape[1]:  # version 4
        residuals[0] = _residual_of_channels(residuals[0], dot.shape[1], residual_relu[0])
        residual_relu[0] = 0
    return _activated(_add_residuals(dot * multiplier.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), residuals,
                                     residual_relu), activation)


def _conv_fake(x, weight, kernel_shape, strides, pads, dilations):
    height, width = (conv_output_size(x.shape[2 + axis], pads[axis], pads[2 + axis], kernel_shape[axis],
                                      strides[axis], dilations[axis]) for axis in range(2))
    return x.new_empty((x.shape[0], weight.shape[0], height, width))


def _linear_reference(x, weight, multiplier, bias, threshold, residuals, in_features, residual_relu=(0, 0)):
    dot = F.linear(_signs_of_input(x, threshold, -1), _unpack(weight, in_features))
    return _add_residuals(dot * multiplier + bias, residuals, residual_relu)


@torch.library.custom_op(BINARY_CONV2D_V1.torch_op, mutates_args=())
def binary_conv2d(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                  in_channels: int, kernel_shape: List[int], strides: List[int], pads: List[int],
                  dilations: List[int]) -> torch.Tensor:
    """BinaryConv2d v1 (kernels/ops/): ``multiplier * D + bias``, D the zero-padded correlation of
    sign(x) with the packed signs ``weight`` [M, KH, KW, ceil(C/64)]; pads are [top, left, bottom, right]."""
    return _conv_reference(x, weight, multiplier, bias, None, (), in_channels, strides, pads, dilations)


@binary_conv2d.register_fake
def _binary_conv2d_fake(x, weight, multiplier, bias, in_channels, kernel_shape, strides, pads, dilations):
    return _conv_fake(x, weight, kernel_shape, strides, pads, dilations)


@torch.library.custom_op(BINARY_CONV2D_V2.torch_op, mutates_args=())
def binary_conv2d_v2(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                     threshold: Optional[torch.Tensor], residual: Optional[torch.Tensor], in_channels: int,
                     kernel_shape: List[int], strides: List[int], pads: List[int],
                     dilations: List[int]) -> torch.Tensor:
    """BinaryConv2d v2: v1 on sign(x - threshold[c]), plus ``residual`` (either may be None)."""
    return _conv_reference(x, weight, multiplier, bias, threshold, (residual,), in_channels, strides, pads, dilations)


@binary_conv2d_v2.register_fake
def _binary_conv2d_v2_fake(x, weight, multiplier, bias, threshold, residual, in_channels, kernel_shape, strides,
                           pads, dilations):
    return _conv_fake(x, weight, kernel_shape, strides, pads, dilations)


@torch.library.custom_op(BINARY_CONV2D_V3.torch_op, mutates_args=())
def binary_conv2d_v3(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                     threshold: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                     residual2: Optional[torch.Tensor], in_channels: int, kernel_shape: List[int], strides: List[int],
                     pads: List[int], dilations: List[int], residual_relu: List[int]) -> torch.Tensor:
    """BinaryConv2d v3: v2 plus ``residual2``, each residual through a ReLU where ``residual_relu`` says."""
    return _conv_reference(x, weight, multiplier, bias, threshold, (residual, residual2), in_channels, strides, pads,
                           dilations, residual_relu)


@binary_conv2d_v3.register_fake
def _binary_conv2d_v3_fake(x, weight, multiplier, bias, threshold, residual, residual2, in_channels, kernel_shape,
                           strides, pads, dilations, residual_relu):
    return _conv_fake(x, weight, kernel_shape, strides, pads, dilations)


@torch.library.custom_op(BINARY_CONV2D_V4.torch_op, mutates_args=())
def binary_conv2d_v4(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                     threshold: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                     residual2: Optional[torch.Tensor], in_channels: int, kernel_shape: List[int], strides: List[int],
                     pads: List[int], dilations: List[int], residual_relu: List[int], activation: int) -> torch.Tensor:
    """BinaryConv2d v4: v3 with a ``residual`` of C_r channels, C_r dividing M (tiled) or M dividing C_r
    (adjacent groups averaged): a parameter-free shortcut's Concat or ReduceMean inside the op; then
    ``activation`` (binarize.opset.ACTIVATIONS) of the result."""
    return _conv_reference(x, weight, multiplier, bias, threshold, (residual, residual2), in_channels, strides, pads,
                           dilations, residual_relu, activation)


@binary_conv2d_v4.register_fake
def _binary_conv2d_v4_fake(x, weight, multiplier, bias, threshold, residual, residual2, in_channels, kernel_shape,
                           strides, pads, dilations, residual_relu, activation):
    return _conv_fake(x, weight, kernel_shape, strides, pads, dilations)


@torch.library.custom_op(BINARY_LINEAR_V1.torch_op, mutates_args=())
def binary_linear(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                  in_features: int) -> torch.Tensor:
    """BinaryLinear v1 (kernels/ops/): ``multiplier * (sign(x) . signs^T) + bias`` over x's last axis."""
    return _linear_reference(x, weight, multiplier, bias, None, (), in_features)


@binary_linear.register_fake
def _binary_linear_fake(x, weight, multiplier, bias, in_features):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op(BINARY_LINEAR_V2.torch_op, mutates_args=())
def binary_linear_v2(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                     threshold: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                     in_features: int) -> torch.Tensor:
    """BinaryLinear v2: v1 on sign(x - threshold[k]), plus ``residual`` (either may be None)."""
    return _linear_reference(x, weight, multiplier, bias, threshold, (residual,), in_features)


@binary_linear_v2.register_fake
def _binary_linear_v2_fake(x, weight, multiplier, bias, threshold, residual, in_features):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op(BINARY_LINEAR_V3.torch_op, mutates_args=())
def binary_linear_v3(x: torch.Tensor, weight: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                     threshold: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                     residual2: Optional[torch.Tensor], in_features: int, residual_relu: List[int]) -> torch.Tensor:
    """BinaryLinear v3: v2 plus ``residual2``, each residual through a ReLU where ``residual_relu`` says."""
    return _linear_reference(x, weight, multiplier, bias, threshold, (residual, residual2), in_features, residual_relu)


@binary_linear_v3.register_fake
def _binary_linear_v3_fake(x, weight, multiplier, bias, threshold, residual, residual2, in_features, residual_relu):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _onnx_op(op):  # the onnxscript callable that emits a node of the operator version ``op``
    return getattr(onnxscript.values.Opset(op.domain, op.version), op.name)


def _conv_attributes(in_channels, kernel_shape, strides, pads, dilations) -> dict:
    return dict(in_channels=in_channels, kernel_shape=list(kernel_shape), strides=list(strides), pads=list(pads),
                dilations=list(dilations), group=1)


def _binary_conv2d_onnx(x, weight, multiplier, bias, in_channels: int, kernel_shape: Sequence[int],
                        strides: Sequence[int], pads: Sequence[int], dilations: Sequence[int]):
    return _onnx_op(BINARY_CONV2D_V1)(x, weight, multiplier, bias,
                                      **_conv_attributes(in_channels, kernel_shape, strides, pads, dilations))


def _binary_conv2d_v2_onnx(x, weight, multiplier, bias, threshold, residual, in_channels: int,
                           kernel_shape: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                           dilations: Sequence[int]):
    return _onnx_op(BINARY_CONV2D_V2)(x, weight, multiplier, bias, threshold, residual,
                                      **_conv_attributes(in_channels, kernel_shape, strides, pads, dilations))


def _binary_conv2d_v3_onnx(x, weight, multiplier, bias, threshold, residual, residual2, in_channels: int,
                           kernel_shape: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                           dilations: Sequence[int], residual_relu: Sequence[int]):
    return _onnx_op(BINARY_CONV2D_V3)(x, weight, multiplier, bias, threshold, residual, residual2,
                                      **_conv_attributes(in_channels, kernel_shape, strides, pads, dilations),
                                      residual_relu=list(residual_relu))


def _binary_conv2d_v4_onnx(x, weight, multiplier, bias, threshold, residual, residual2, in_channels: int,
                           kernel_shape: Sequence[int], strides: Sequence[int], pads: Sequence[int],
                           dilations: Sequence[int], residual_relu: Sequence[int], activation: int):
    return _onnx_op(BINARY_CONV2D_V4)(x, weight, multiplier, bias, threshold, residual, residual2,
                                      **_conv_attributes(in_channels, kernel_shape, strides, pads, dilations),
                                      residual_relu=list(residual_relu), activation=activation)


def _binary_linear_onnx(x, weight, multiplier, bias, in_features: int):
    return _onnx_op(BINARY_LINEAR_V1)(x, weight, multiplier, bias, in_features=in_features)


def _binary_linear_v2_onnx(x, weight, multiplier, bias, threshold, residual, in_features: int):
    return _onnx_op(BINARY_LINEAR_V2)(x, weight, multiplier, bias, threshold, residual, in_features=in_features)


def _binary_linear_v3_onnx(x, weight, multiplier, bias, threshold, residual, residual2, in_features: int,
                           residual_relu: Sequence[int]):
    return _onnx_op(BINARY_LINEAR_V3)(x, weight, multiplier, bias, threshold, residual, residual2,
                                      in_features=in_features, residual_relu=list(residual_relu))


#: ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``.
ONNX_TRANSLATIONS = {
    torch.ops.binarize.binary_conv2d.default: _binary_conv2d_onnx,
    torch.ops.binarize.binary_linear.default: _binary_linear_onnx,
    torch.ops.binarize.binary_conv2d_v2.default: _binary_conv2d_v2_onnx,
    torch.ops.binarize.binary_linear_v2.default: _binary_linear_v2_onnx,
    torch.ops.binarize.binary_conv2d_v3.default: _binary_conv2d_v3_onnx,
    torch.ops.binarize.binary_linear_v3.default: _binary_linear_v3_onnx,
    torch.ops.binarize.binary_conv2d_v4.default: _binary_conv2d_v4_onnx,
}


# ----------------------------------------------------------------------------------- modules
def _as_float32(values: torch.Tensor) -> torch.Tensor:
    return values.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_per_channel(name: str, what: str, values: torch.Tensor, channels: int) -> None:
    if values.shape != (channels,):
        raise ValueError(f"'{name}': {what} has shape {tuple(values.shape)}, expected ({channels},), "
                         f"one value per packed output channel")


def _optional_threshold(name: str, threshold: Optional[torch.Tensor], channels: int) -> Optional[torch.Tensor]:
    if threshold is None:
        return None
    if threshold.shape != (channels,):
        raise ValueError(f"'{name}': input_threshold has shape {tuple(threshold.shape)}, expected ({channels},), "
                         f"one value per input channel")
    return _as_float32(threshold)


class _PackedBinaryLayer(nn.Module):
    """What both packed layers share: the operator version they run and export as, and the residual
    inputs of a call.

    ``forward(x, residual=None, residual2=None, residual_relu=(0, 0))`` adds the residuals in the
    op's epilogue, each through a ReLU where ``residual_relu`` says; a conv's ``activation``
    (binarize.opset.ACTIVATIONS) follows. ``op_version`` None (the default) is the oldest version the
    call needs: 1; 2 with a ``threshold`` or a ``residual`` (v2); 3 with ``residual2`` or a ReLU
    (v3); 4 with a conv's ``residual`` of another channel count or an ``activation`` (v4). The
    exporter sets the newest version any layer of the model needs on every layer, since an ONNX
    model imports one version of the domain."""

    op_version: Optional[int] = None

    def needed_version(self, residual: bool = False, residual2: bool = False,
                       residual_relu: Sequence[int] = (0, 0), residual_channels: Optional[int] = None,
                       activation: int = 0) -> int:
        """The oldest operator version that runs this layer called with (or without) each residual;
        ``residual_channels``: the residual's channel count (a conv's output channels if None)."""
        if activation or (residual_channels is not None and
                          residual_channels != getattr(self, "out_channels", residual_channels)):
            return 4
        if residual2 or any(residual_relu):
            return 3
        return 2 if residual or self.threshold is not None else 1

    def _version(self, residual: Optional[torch.Tensor], residual2: Optional[torch.Tensor],
                 residual_relu: Sequence[int], activation: int = 0) -> int:
        channels = residual.shape[1] if residual is not None and isinstance(self, PackedBinaryConv2d) else None
        needs = self.needed_version(residual is not None, residual2 is not None, residual_relu, channels, activation)
        if self.op_version is None:
            return needs
        if self.op_version < needs:
            raise ValueError(f"op_version = {self.op_version}, but this call needs version {needs}: a threshold or "
                             f"residual needs version 2, a second residual or a residual ReLU version 3, a conv's "
                             f"residual of another channel count or an activation version 4")
        return self.op_version


class PackedBinaryConv2d(_PackedBinaryLayer):
    """A binary conv for inference: BinaryConv2d with ``orientations * out_channels`` packed outputs,
    then (``orientations > 1``, CBCN) a max over the orientations and the layer's bias.

    ``signs`` is [orientations * out_channels, C, KH, KW] in {-1, +1}; ``multiplier`` and ``bias``
    have one value per packed output channel and are applied before the max, ``post_bias`` (one
    per output channel, optional) after it. ``threshold`` (one per input channel, optional) is the
    binarization point of the input (v2); the residuals of ``forward`` are added in the op's
    epilogue (v2, v3; only without orientations and post_bias, where the op's output is the layer's).
    """

    def __init__(self, name: str, signs: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                 stride: Tuple[int, int], pads: Tuple[int, int, int, int], dilation: Tuple[int, int],
                 orientations: int = 1, post_bias: Optional[torch.Tensor] = None,
                 threshold: Optional[torch.Tensor] = None):
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
        self.register_buffer("threshold", _optional_threshold(name, threshold, in_channels))

    @property
    def takes_residual(self) -> bool:
        """Whether the op's output is the layer's output, so a residual can be added in the op."""
        return self.orientations == 1 and self.post_bias is None

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                residual2: Optional[torch.Tensor] = None, residual_relu: Sequence[int] = (0, 0),
                activation: int = 0) -> torch.Tensor:
        if (residual is not None or residual2 is not None or activation) and not self.takes_residual:
            raise ValueError("a residual or activation is applied by the op only without orientations and post_bias")
        geometry = (self.in_channels, self.kernel_shape, self.strides, self.pads, self.dilations)
        version = self._version(residual, residual2, residual_relu, activation)
        if version == 1:
            y = binary_conv2d(x, self.weight, self.multiplier, self.bias, *geometry)
        elif version == 2:
            y = binary_conv2d_v2(x, self.weight, self.multiplier, self.bias, self.threshold, residual, *geometry)
        elif version == 3:
            y = binary_conv2d_v3(x, self.weight, self.multiplier, self.bias, self.threshold, residual, residual2,
                                 *geometry, list(residual_relu))
        else:
            y = binary_conv2d_v4(x, self.weight, self.multiplier, self.bias, self.threshold, residual, residual2,
                                 *geometry, list(residual_relu), activation)
        if self.orientations > 1:
            y = y.unflatten(1, (self.orientations, self.out_channels)).amax(1)
        if self.post_bias is not None:
            y = y + self.post_bias
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_shape={self.kernel_shape}, "
                f"strides={self.strides}, pads={self.pads}, dilations={self.dilations}, "
                f"orientations={self.orientations}, packed_words={packed_words(self.in_channels)}, "
                f"op_version={self.op_version}")


class PackedBinaryLinear(_PackedBinaryLayer):
    """A binary Linear for inference: BinaryLinear with packed signs [M, K], multiplier and bias [M],
    optionally a ``threshold`` [K] and residuals added in the op (v2, v3)."""

    takes_residual = True

    def __init__(self, name: str, signs: torch.Tensor, multiplier: torch.Tensor, bias: torch.Tensor,
                 threshold: Optional[torch.Tensor] = None):
        super().__init__()
        out_features, self.in_features = signs.shape
        _check_per_channel(name, "multiplier", multiplier, out_features)
        _check_per_channel(name, "bias", bias, out_features)
        self.out_features = out_features
        self.register_buffer("weight", torch.from_numpy(pack_weight(signs)))
        self.register_buffer("multiplier", _as_float32(multiplier))
        self.register_buffer("bias", _as_float32(bias))
        self.register_buffer("threshold", _optional_threshold(name, threshold, self.in_features))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                residual2: Optional[torch.Tensor] = None, residual_relu: Sequence[int] = (0, 0)) -> torch.Tensor:
        version = self._version(residual, residual2, residual_relu)
        if version == 1:
            return binary_linear(x, self.weight, self.multiplier, self.bias, self.in_features)
        if version == 2:
            return binary_linear_v2(x, self.weight, self.multiplier, self.bias, self.threshold, residual,
                                    self.in_features)
        return binary_linear_v3(x, self.weight, self.multiplier, self.bias, self.threshold, residual, residual2,
                                self.in_features, list(residual_relu))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, op_version={self.op_version}"
