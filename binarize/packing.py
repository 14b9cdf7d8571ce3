"""Bit-packing of ±1 weights into the int64 layouts of the ``binarize`` ONNX ops (kernels/SPEC.md, kernels/ops/).

Bit ``c % 64`` of word ``c // 64`` is 1 iff the sign along the packed axis at index ``c`` is -1;
unused high bits of the last word are 0. ``BinaryConv2d`` packs the input-channel axis per kernel
tap ([M, C, KH, KW] -> [M, KH, KW, ceil(C/64)]); ``BinaryLinear`` packs the input-feature axis
([M, K] -> [M, ceil(K/64)]). Accepts numpy arrays or torch tensors; returns numpy int64.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pack_bits", "unpack_bits", "pack_weight", "unpack_weight", "packed_words"]

_BIT_VALUES = np.left_shift(np.uint64(1), np.arange(64, dtype=np.uint64))


def packed_words(length: int) -> int:
    """Number of 64-bit words holding ``length`` signs."""
    return (length + 63) // 64


def _as_numpy(signs) -> np.ndarray:
    if hasattr(signs, "detach"):  # torch.Tensor, without importing torch here
        signs = signs.detach().cpu().numpy()
    return np.asarray(signs)


def pack_bits(signs, axis: int = -1) -> np.ndarray:
    """Packs a ±1 array along ``axis`` into int64 words, which become the last axis.

    The other axes keep their order. Values must be exactly +1 or -1 (0 is rejected rather
    than silently packed as +1, because it usually means an unbinarized weight).
    """
    array = _as_numpy(signs)
    if not np.all((array == 1) | (array == -1)):
        raise ValueError("pack_bits expects only +1 and -1 values")
    moved = np.moveaxis(array, axis, -1)
    length = moved.shape[-1]
    words = packed_words(length)
    bits = np.zeros(moved.shape[:-1] + (words * 64,), dtype=np.uint64)
    bits[..., :length] = moved < 0
    bits = bits.reshape(moved.shape[:-1] + (words, 64))
    packed = np.bitwise_or.reduce(bits * _BIT_VALUES, axis=-1)
    return packed.view(np.int64)


def unpack_bits(packed, length: int, axis: int = -1) -> np.ndarray:
    """Inverse of :func:`pack_bits`: int64 words (last axis) -> ±1 float32 with ``length`` entries at ``axis``."""
    words = _as_numpy(packed).astype(np.int64).view(np.uint64)
    if words.shape[-1] != packed_words(length):
        raise ValueError(f"{words.shape[-1]} words cannot hold {length} signs (need {packed_words(length)})")
    bits = (words[..., None] & _BIT_VALUES) != 0
    bits = bits.reshape(words.shape[:-1] + (words.shape[-1] * 64,))[..., :length]
    signs = np.where(bits, np.float32(-1), np.float32(1))
    return np.moveaxis(signs, -1, axis)


def pack_weight(signs) -> np.ndarray:
    """±1 weights -> the packed ``W`` input of the ops: conv [M, C, KH, KW] -> int64
    [M, KH, KW, ceil(C/64)] (BinaryConv2d); linear [M, K] -> int64 [M, ceil(K/64)] (BinaryLinear)."""
    array = _as_numpy(signs)
    if array.ndim not in (2, 4):
        raise ValueError(f"weight must be [M, C, KH, KW] (conv) or [M, K] (linear), got shape {array.shape}")
    return pack_bits(array, axis=1)


def unpack_weight(packed, in_channels: int) -> np.ndarray:
    """Inverse of :func:`pack_weight`: ±1 float32 [M, C, KH, KW] or [M, K]."""
    return unpack_bits(packed, in_channels, axis=1)
