"""Property-based and hostile-input tests of the C++ kernels.

- Random valid shapes (hypothesis) on every kernel path against an independent reference: PyTorch's
  float convolution of the signs (version 2: of sign(x - threshold), ties x = threshold included,
  plus the residual; version 3: plus two residuals, each through a ReLU or not, with negative
  zeros and NaNs among their values; version 4: the first residual of another channel count,
  tiled or averaged in groups, and an activation of the result).
- Hostile attributes (huge or wrapped-around pads, strides, dilations, kernel sizes, wrong types)
  on every path, in a subprocess: each must be a Python exception, never a signal and never an
  output. Both tests are bounded to a few seconds each.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from binarize import packing
from binarize.kernels import available_isas, library_path

try:
    library_path()
except FileNotFoundError as error:
    pytest.fail(f"libbinarize_ort is not built: {error}", pytrace=False)

from binarize import runtime  # noqa: E402

ISAS = available_isas()
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def model_bytes(op: str, x_shape, initializers: dict, attributes: list, *, inputs=("X", "W", "multiplier", "bias"),
                version: int = 1, graph_inputs: dict = None) -> bytes:
    """One binarize node; ``inputs`` its input names ("" = left out), ``graph_inputs`` float inputs
    other than X (name -> shape), everything else an initializer."""
    node = helper.make_node(op, list(inputs), ["Y"], domain="binarize")
    node.attribute.extend(attributes)
    feeds = {"X": x_shape, **(graph_inputs or {})}
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in feeds.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("binarize", version)])
    model.ir_version = 10
    return model.SerializeToString()


def v2_inputs(with_threshold: bool, with_residual: bool, with_residual2: bool = False) -> tuple:
    """BinaryConv2d / BinaryLinear v2 (and, with ``with_residual2``, v3) input names, an optional
    input left out as ""."""
    names = ["X", "W", "multiplier", "bias", "threshold" if with_threshold else "", "R" if with_residual else "",
             "R2" if with_residual2 else ""]
    while names[-1] == "":
        names.pop()
    return tuple(names)


def float_sign(x: np.ndarray) -> torch.Tensor:
    return torch.where(torch.from_numpy(x) >= 0, 1.0, -1.0).double()  # sign(0) = +1


@st.composite
def conv_cases(draw):
    n, c, m = draw(st.integers(0, 2)), draw(st.integers(1, 140)), draw(st.integers(1, 40))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw, dh, dw = (draw(st.integers(1, 3)) for _ in range(4))
    pads = tuple(draw(st.integers(0, 4)) for _ in range(4))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    assume(h + pads[0] + pads[2] >= dh * (kh - 1) + 1 and w + pads[1] + pads[3] >= dw * (kw - 1) + 1)
    return n, c, m, (kh, kw), (sh, sw), pads, (dh, dw), (h, w), draw(st.integers(0, 2**32 - 1))


def assert_every_path_gives(model: bytes, feed: dict, expected: np.ndarray) -> None:
    """The model's output on every kernel path this machine runs, against the reference result."""
    for isa in ISAS:
        y = runtime.session(model, threads=2, isa=isa).run(None, feed)[0]
        assert y.shape == expected.shape, isa
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4, err_msg=isa)


def random_conv(case, rng: np.random.Generator) -> tuple:
    """(x, a tenth of it 0; +-1 weights; multiplier; bias; the node's attributes; the reference
    result: PyTorch's float conv of the zero-padded signs, times multiplier, plus bias) for a
    conv_cases() draw."""
    n, c, m, kernel, stride, pads, dilation, (h, w), _ = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    w_signs = np.where(rng.random((m, c, *kernel)) < 0.5, -1.0, 1.0).astype(np.float32)
    multiplier = rng.uniform(0.5, 2.0, m).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    top, left, bottom, right = pads
    d = F.conv2d(F.pad(float_sign(x), (left, right, top, bottom)), torch.from_numpy(w_signs).double(),
                 stride=stride, dilation=dilation).numpy()
    attributes = [helper.make_attribute("kernel_shape", list(kernel)), helper.make_attribute("in_channels", c),
                  helper.make_attribute("strides", list(stride)), helper.make_attribute("pads", list(pads)),
                  helper.make_attribute("dilations", list(dilation))]
    return x, w_signs, multiplier, bias, attributes, d * multiplier[:, None, None] + bias[:, None, None]


@FUZZ
@given(conv_cases())
def test_random_conv_matches_float_conv_of_signs_on_every_path(case):
    x, w_signs, multiplier, bias, attributes, expected = random_conv(case, np.random.default_rng(case[-1]))
    model = model_bytes("BinaryConv2d", x.shape, {"W": packing.pack_weight(w_signs), "multiplier": multiplier,
                                                  "bias": bias}, attributes)
    assert_every_path_gives(model, {"X": x}, expected)


def random_linear(rows, features: int, out_features: int, rng: np.random.Generator) -> tuple:
    """(x [*rows, features]; +-1 weights; multiplier; bias; the reference result: the float matmul
    of the signs, times multiplier, plus bias)."""
    x = rng.standard_normal((*rows, features)).astype(np.float32)
    w_signs = np.where(rng.random((out_features, features)) < 0.5, -1.0, 1.0).astype(np.float32)
    multiplier = rng.uniform(0.5, 2.0, out_features).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    return x, w_signs, multiplier, bias, (float_sign(x) @ torch.from_numpy(w_signs).double().T).numpy() * multiplier + bias


@FUZZ
@given(st.lists(st.integers(0, 3), min_size=1, max_size=3), st.integers(1, 300), st.integers(1, 40),
       st.integers(0, 2**32 - 1))
def test_random_linear_matches_float_matmul_of_signs_on_every_path(rows, features, out_features, seed):
    x, w_signs, multiplier, bias, expected = random_linear(rows, features, out_features, np.random.default_rng(seed))
    model = model_bytes("BinaryLinear", x.shape, {"W": packing.pack_weight(w_signs), "multiplier": multiplier,
                                                  "bias": bias}, [helper.make_attribute("in_features", features)])
    assert_every_path_gives(model, {"X": x}, expected)


# ---- version 2: threshold and residual --------------------------------------------------------

def thresholds_with_ties(x: np.ndarray, axis: int, rng: np.random.Generator) -> np.ndarray:
    """One threshold per entry of ``axis`` of x; about a third of them equal to a value of x in
    their channel, so that x - threshold = 0 (sign +1) is hit, the rest uniform in [-1, 1]."""
    channels = x.shape[axis]
    threshold = rng.uniform(-1, 1, channels).astype(np.float32)
    moved = np.moveaxis(x, axis, 0).reshape(channels, -1)
    if moved.shape[1]:
        ties = rng.random(channels) < 0.35
        threshold[ties] = moved[ties, rng.integers(0, moved.shape[1], channels)[ties]]
    return threshold


def float_sign_minus(x: np.ndarray, threshold: np.ndarray, axis: int) -> torch.Tensor:
    """sign(x - threshold) in double, the difference taken in float32 as the operator says."""
    shape = [1] * x.ndim
    shape[axis] = -1
    return float_sign((x - threshold.reshape(shape)).astype(np.float32))


def assert_v2_case(op: str, x: np.ndarray, attributes: list, w_signs: np.ndarray, multiplier: np.ndarray,
                   bias: np.ndarray, expected: np.ndarray, threshold, with_residual: bool, rng) -> None:
    """A version-2 node with the given weights, the optional threshold input (None: left out) and, with
    ``with_residual``, a random residual graph input added to ``expected``, on every kernel path."""
    residual = rng.standard_normal(expected.shape).astype(np.float32)
    if with_residual:
        expected = expected + residual
    initializers = {"W": packing.pack_weight(w_signs), "multiplier": multiplier, "bias": bias}
    if threshold is not None:
        initializers["threshold"] = threshold
    model = model_bytes(op, x.shape, initializers, attributes,
                        inputs=v2_inputs(threshold is not None, with_residual), version=2,
                        graph_inputs={"R": residual.shape} if with_residual else None)
    assert_every_path_gives(model, {"X": x, **({"R": residual} if with_residual else {})}, expected)


@FUZZ
@given(conv_cases(), st.booleans(), st.booleans())
def test_random_conv_v2_matches_float_conv_of_thresholded_signs_plus_residual(case, with_threshold, with_residual):
    n, c, m, kernel, stride, pads, dilation, (h, w), seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    threshold = thresholds_with_ties(x, 1, rng) if with_threshold else np.zeros(c, np.float32)
    w_signs = np.where(rng.random((m, c, *kernel)) < 0.5, -1.0, 1.0).astype(np.float32)
    multiplier = rng.uniform(0.5, 2.0, m).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    top, left, bottom, right = pads
    d = F.conv2d(F.pad(float_sign_minus(x, threshold, 1), (left, right, top, bottom)),
                 torch.from_numpy(w_signs).double(), stride=stride, dilation=dilation).numpy()
    attributes = [helper.make_attribute("kernel_shape", list(kernel)), helper.make_attribute("in_channels", c),
                  helper.make_attribute("strides", list(stride)), helper.make_attribute("pads", list(pads)),
                  helper.make_attribute("dilations", list(dilation))]
    assert_v2_case("BinaryConv2d", x, attributes, w_signs, multiplier, bias,
                   d * multiplier[:, None, None] + bias[:, None, None],
                   threshold if with_threshold else None, with_residual, rng)


@FUZZ
@given(st.lists(st.integers(0, 3), min_size=1, max_size=3), st.integers(1, 300), st.integers(1, 40),
       st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_random_linear_v2_matches_float_matmul_of_thresholded_signs_plus_residual(rows, features, out_features, seed,
                                                                                   with_threshold, with_residual):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*rows, features)).astype(np.float32)
    threshold = thresholds_with_ties(x, -1, rng) if with_threshold else np.zeros(features, np.float32)
    w_signs = np.where(rng.random((out_features, features)) < 0.5, -1.0, 1.0).astype(np.float32)
    multiplier = rng.uniform(0.5, 2.0, out_features).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    expected = (float_sign_minus(x, threshold, -1) @ torch.from_numpy(w_signs).double().T).numpy() * multiplier + bias
    assert_v2_case("BinaryLinear", x, [helper.make_attribute("in_features", features)], w_signs, multiplier, bias,
                   expected, threshold if with_threshold else None, with_residual, rng)


# ---- version 3: a second residual and a ReLU on either -----------------------------------------

def residual_values(shape, rng: np.random.Generator) -> np.ndarray:
    """Random residual values with negative zeros and NaNs among them: the ReLU keeps NaN (and -0)."""
    r = rng.standard_normal(shape).astype(np.float32)
    r[rng.random(shape) < 0.05] = -0.0
    r[rng.random(shape) < 0.02] = np.nan
    return r


def rectified(r: np.ndarray, relu: int) -> np.ndarray:
    return np.where(r < 0, np.float32(0), r) if relu else r


def assert_v3_case(op: str, x: np.ndarray, attributes: list, w_signs: np.ndarray, multiplier: np.ndarray,
                   bias: np.ndarray, expected: np.ndarray, residuals: tuple, relu: tuple, rng) -> None:
    """A version-3 node: ``residuals`` (present or not) as graph inputs R and R2, ``residual_relu`` =
    ``relu``; expected = ((expected + f0(R)) + f1(R2)) in float32, on every kernel path."""
    expected = expected.astype(np.float32)
    values = [residual_values(expected.shape, rng) if present else None for present in residuals]
    for value, flag in zip(values, relu):
        if value is not None:
            expected = expected + rectified(value, flag)
    names = {"R": values[0], "R2": values[1]}
    feeds = {name: value for name, value in names.items() if value is not None}
    model = model_bytes(op, x.shape, {"W": packing.pack_weight(w_signs), "multiplier": multiplier, "bias": bias},
                        attributes + [helper.make_attribute("residual_relu", list(relu))],
                        inputs=v2_inputs(False, residuals[0], residuals[1]), version=3,
                        graph_inputs={name: value.shape for name, value in feeds.items()})
    assert_every_path_gives(model, {"X": x, **feeds}, expected)


RESIDUALS_AND_RELUS = st.tuples(st.tuples(st.booleans(), st.booleans()), st.tuples(st.integers(0, 1), st.integers(0, 1)))


@FUZZ
@given(conv_cases(), RESIDUALS_AND_RELUS)
def test_random_conv_v3_adds_two_residuals_each_through_its_relu(case, residuals_and_relus):
    residuals, relu = residuals_and_relus
    rng = np.random.default_rng(case[-1])
    x, w_signs, multiplier, bias, attributes, expected = random_conv(case, rng)
    assert_v3_case("BinaryConv2d", x, attributes, w_signs, multiplier, bias, expected, residuals, relu, rng)


@FUZZ
@given(st.lists(st.integers(0, 3), min_size=1, max_size=3), st.integers(1, 300), st.integers(1, 40),
       st.integers(0, 2**32 - 1), RESIDUALS_AND_RELUS)
def test_random_linear_v3_adds_two_residuals_each_through_its_relu(rows, features, out_features, seed,
                                                                   residuals_and_relus):
    residuals, relu = residuals_and_relus
    rng = np.random.default_rng(seed)
    x, w_signs, multiplier, bias, expected = random_linear(rows, features, out_features, rng)
    assert_v3_case("BinaryLinear", x, [helper.make_attribute("in_features", features)], w_signs, multiplier, bias,
                   expected, residuals, relu, rng)


def residual_of_channels(r: np.ndarray, channels: int, relu: int) -> np.ndarray:
    """Version 4's residual for Y's ``channels``: relu first, then tiled (fewer channels) or adjacent
    groups summed in float32 in order and divided by the group size (more channels)."""
    r = rectified(r, relu)
    if r.shape[1] <= channels:
        return np.tile(r, (1, channels // r.shape[1], 1, 1))
    groups = r.reshape(r.shape[0], channels, r.shape[1] // channels, *r.shape[2:])
    total = groups[:, :, 0]
    for i in range(1, groups.shape[2]):
        total = total + groups[:, :, i]
    return total / np.float32(groups.shape[2])


def activated(y: np.ndarray, activation: int) -> np.ndarray:
    """Version 4's activation in float32 (1 ReLU, 2 ReLU6, 3 HardSwish as ONNX's HardSwish)."""
    if activation == 1:
        return np.where(y < 0, np.float32(0), y)
    if activation == 2:
        return np.clip(y, np.float32(0), np.float32(6))
    if activation == 3:
        return y * np.clip(y * np.float32(1 / 6) + np.float32(0.5), np.float32(0), np.float32(1))
    return y


def assert_v4_case(x, attributes, w_signs, multiplier, bias, expected, residual_channels: int, relu: tuple,
                   with_residual2: bool, rng, activation: int = 0) -> None:
    """A version-4 BinaryConv2d whose residual R has ``residual_channels`` channels (and, with
    ``with_residual2``, a residual2 of Y's shape): expected = act((expected + map(f0(R))) + f1(R2)) on
    every kernel path."""
    expected = expected.astype(np.float32)
    n, m, oh, ow = expected.shape
    feeds = {"R": residual_values((n, residual_channels, oh, ow), rng)}
    expected = expected + residual_of_channels(feeds["R"], m, relu[0])
    if with_residual2:
        feeds["R2"] = residual_values(expected.shape, rng)
        expected = expected + rectified(feeds["R2"], relu[1])
    expected = activated(expected, activation)
    model = model_bytes("BinaryConv2d", x.shape, {"W": packing.pack_weight(w_signs), "multiplier": multiplier,
                                                  "bias": bias},
                        attributes + [helper.make_attribute("residual_relu", list(relu)),
                                      helper.make_attribute("activation", activation)],
                        inputs=v2_inputs(False, True, with_residual2), version=4,
                        graph_inputs={name: value.shape for name, value in feeds.items()})
    assert_every_path_gives(model, {"X": x, **feeds}, expected)


@FUZZ
@given(conv_cases(), st.integers(1, 4), st.booleans(), st.tuples(st.integers(0, 1), st.integers(0, 1)), st.booleans(),
       st.integers(0, 3))
def test_random_conv_v4_maps_a_residual_of_another_channel_count_and_activates(case, ratio, widen, relu,
                                                                               with_residual2, activation):
    rng = np.random.default_rng(case[-1])
    x, w_signs, multiplier, bias, attributes, expected = random_conv(case, rng)
    m = w_signs.shape[0]
    assume(not widen or m % ratio == 0)
    residual_channels = m // ratio if widen else m * ratio
    assert_v4_case(x, attributes, w_signs, multiplier, bias, expected, residual_channels, relu, with_residual2, rng,
                   activation)


@pytest.mark.parametrize("activation", [1, 2, 3])
def test_conv_v4_activation_on_every_tile_of_a_banded_image(activation):
    """ReLU, ReLU6 and HardSwish on a 64 -> 40 3x3 conv over 2 images of 45 x 45 (several bands, tiles of
    4 and 3 pixels, a half channel block): every output once, on every path. The outputs are scaled to
    +-10 so that each activation's every branch is taken."""
    rng = np.random.default_rng(activation)
    case = (2, 64, 40, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (45, 45), 0)
    x, w_signs, multiplier, bias, attributes, expected = random_conv(case, rng)
    d = (expected - bias[:, None, None]) / multiplier[:, None, None]  # the integer dot products
    multiplier, bias = np.full(40, 10 / np.abs(d).max(), np.float32), np.zeros(40, np.float32)
    expected = d * multiplier[:, None, None]
    assert_v4_case(x, attributes, w_signs, multiplier, bias, expected, 40, (0, 0), False, rng, activation)


@pytest.mark.parametrize("out_channels, residual_channels", [
    (128, 32), (96, 32), (128, 64),  # tiled in whole 32-channel blocks: read in place by the AVX2 path
    (64, 16), (48, 24), (40, 8),     # tiled, written out first
    (32, 96), (16, 256),              # averaged in groups of 3 and 16
])
def test_conv_v4_residual_of_mobilenet_and_resnet_shortcut_shapes(out_channels, residual_channels):
    """The channel ratios of the parameter-free shortcuts in the model zoo (1x1, 7x7 map, 2 images),
    with the residual's ReLU and a second residual: every path against the NumPy reference."""
    rng = np.random.default_rng(out_channels * 1000 + residual_channels)
    case = (2, 40, out_channels, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (7, 7), 0)
    x, w_signs, multiplier, bias, attributes, expected = random_conv(case, rng)
    assert_v4_case(x, attributes, w_signs, multiplier, bias, expected, residual_channels, (1, 0), True, rng)


# ---- hostile attributes ---------------------------------------------------------------------

BIG = 2**62
HOSTILE_CONV = {
    # name: (x shape, W shape, attributes other than in_channels = C of x)
    "pads near 2^62": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], pads=[BIG, BIG, BIG, BIG])),
    "pads wrapping to negative": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], pads=[2**63 - 1] * 4)),
    "pads at the limit": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], pads=[65535] * 4)),
    "negative pads": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], pads=[-(2**63), 0, 0, 0])),
    "huge stride": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], strides=[2**63 - 1, 1])),
    "huge dilation": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], dilations=[BIG, 1])),
    "dilation x kernel wrapping": ((1, 8, 5, 5), (4, 3, 3, 1),
                                   dict(kernel_shape=[3, 3], dilations=[2**63 // 2 + 1, 1])),
    "dilated kernel larger than padded input": ((1, 8, 5, 5), (4, 3, 3, 1),
                                                dict(kernel_shape=[3, 3], dilations=[65535, 65535], pads=[1] * 4)),
    "huge kernel": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[2**32, 2**32])),
    "reduction above 2^31": ((1, 1, 5, 5), (1, 1, 1, 1), dict(kernel_shape=[46341, 46341])),
    "group as float": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], group=2.0)),
    "group huge": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], group=2**40)),
    "pads as one int": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], pads=1)),
    "kernel as floats": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3.0, 3.0])),
    "empty strides": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], strides=[])),
    "linear attribute on conv": ((1, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], in_features=8)),
    "empty batch, hostile pads": ((0, 8, 5, 5), (4, 3, 3, 1), dict(kernel_shape=[3, 3], pads=[65535] * 4)),
}

# Version 2's optional inputs of the wrong shape: (op, X shape, threshold shape or None, residual
# shape or None); the conv is 3x3 without padding on 8 channels, 4 outputs (Y [1, 4, 3, 3]).
HOSTILE_V2_INPUTS = {
    "threshold one short": ("BinaryConv2d", (1, 8, 5, 5), (7,), None),
    "threshold one long": ("BinaryConv2d", (1, 8, 5, 5), (9,), None),
    "threshold as a column": ("BinaryConv2d", (1, 8, 5, 5), (8, 1), None),
    "threshold scalar": ("BinaryConv2d", (1, 8, 5, 5), (), None),
    "threshold empty": ("BinaryConv2d", (1, 8, 5, 5), (0,), None),
    "residual of the input's shape": ("BinaryConv2d", (1, 8, 5, 5), None, (1, 4, 5, 5)),
    "residual broadcastable": ("BinaryConv2d", (1, 8, 5, 5), None, (1, 4, 1, 1)),
    "residual of rank 3": ("BinaryConv2d", (1, 8, 5, 5), None, (4, 3, 3)),
    "residual empty": ("BinaryConv2d", (1, 8, 5, 5), None, (0, 4, 3, 3)),
    "residual of another batch": ("BinaryConv2d", (2, 8, 5, 5), (8,), (1, 4, 3, 3)),
    "residual of 3 channels for 4": ("BinaryConv2d", (1, 8, 5, 5), None, (1, 3, 3, 3)),
    "residual of 6 channels for 4": ("BinaryConv2d", (1, 8, 5, 5), None, (1, 6, 3, 3)),
    "residual of 0 channels": ("BinaryConv2d", (1, 8, 5, 5), None, (1, 0, 3, 3)),
    "linear threshold one short": ("BinaryLinear", (2, 64), (63,), None),
    "linear residual transposed": ("BinaryLinear", (2, 64), None, (3, 2)),
    "linear residual with zero rows": ("BinaryLinear", (0, 64), None, (1, 3)),
}

# Version 3: residual_relu (an attribute of BinaryConv2d 3x3 on 8 channels, 4 outputs) and residual2
# of the wrong shape: name -> (residual_relu attribute value or None, residual2 shape or None).
HOSTILE_V3 = {
    "residual_relu of 3 values": ([1, 1, 1], None),
    "residual_relu of 1 value": ([1], None),
    "residual_relu value 2": ([2, 0], None),
    "residual_relu negative": ([0, -1], None),
    "residual_relu as an int": (1, None),
    "residual_relu as floats": ([1.0, 0.0], None),
    "residual2 of the input's shape": (None, (1, 4, 5, 5)),
    "residual2 broadcastable": ([0, 1], (1, 4, 1, 1)),
    "residual2 of rank 3": (None, (4, 3, 3)),
}

# Version 4's activation (BinaryConv2d 3x3 on 8 channels, 4 outputs): name -> attribute value.
HOSTILE_V4 = {
    "activation 4": 4,
    "activation negative": -1,
    "activation huge": 2**40,
    "activation as a float": 1.0,
    "activation as a list": [1, 2],
}

HOSTILE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import onnxruntime as ort
    from binarize.kernels import library_path
    results = {}
    for name, isa, path, feeds in json.loads(sys.argv[1]):
        options = ort.SessionOptions()
        options.add_session_config_entry("binarize.isa", isa)
        options.register_custom_ops_library(library_path())
        try:
            sess = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
            y = sess.run(None, {key: np.ones(shape, np.float32) for key, shape in feeds.items()})[0]
            results[name + " / " + isa] = "output of shape %s" % (y.shape,)
        except Exception as error:
            results[name + " / " + isa] = "error: " + str(error).split("\\n")[0]
    print(json.dumps(results))
""")


def test_hostile_attributes_are_errors_on_every_path(tmp_path):
    """Plain ONNX Runtime with the library (only the C++ checks run) in a fresh interpreter: every
    hostile case (attributes; version 2's threshold and residual and version 3's residual2 of the
    wrong shape, a malformed residual_relu, version 4's activation out of range) on every path
    must raise; the process must exit normally (no SIGSEGV, no abort)."""
    jobs = []
    for i, (name, (x_shape, w_shape, attributes)) in enumerate(HOSTILE_CONV.items()):
        path = tmp_path / f"{i}.onnx"
        m = w_shape[0]
        path.write_bytes(model_bytes(
            "BinaryConv2d", x_shape, {"W": np.zeros(w_shape, np.int64), "multiplier": np.ones(m, np.float32),
                                      "bias": np.zeros(m, np.float32)},
            [helper.make_attribute("in_channels", x_shape[1])] +
            [helper.make_attribute(key, value, attr_type=AttributeProto.INTS if value == [] else None)
             for key, value in attributes.items()]))
        jobs.extend((name, isa, str(path), {"X": list(x_shape)}) for isa in ISAS)
    linear = tmp_path / "linear.onnx"
    linear.write_bytes(model_bytes("BinaryLinear", (2, 64), {"W": np.zeros((3, 1), np.int64),
                                                             "multiplier": np.ones(3, np.float32),
                                                             "bias": np.zeros(3, np.float32)},
                                   [helper.make_attribute("in_features", 64),
                                    helper.make_attribute("pads", [BIG] * 4)]))
    jobs.extend(("conv attribute on linear", isa, str(linear), {"X": [2, 64]}) for isa in ISAS)
    for i, (name, (op, x_shape, threshold_shape, residual_shape)) in enumerate(HOSTILE_V2_INPUTS.items()):
        path = tmp_path / f"v2-{i}.onnx"
        initializers = {"W": np.zeros((4, 3, 3, 1) if op == "BinaryConv2d" else (3, 1), np.int64),
                        "multiplier": np.ones(4 if op == "BinaryConv2d" else 3, np.float32),
                        "bias": np.zeros(4 if op == "BinaryConv2d" else 3, np.float32)}
        if threshold_shape is not None:
            initializers["threshold"] = np.zeros(threshold_shape, np.float32)
        attributes = ([helper.make_attribute("in_channels", 8), helper.make_attribute("kernel_shape", [3, 3])]
                      if op == "BinaryConv2d" else [helper.make_attribute("in_features", 64)])
        path.write_bytes(model_bytes(op, x_shape, initializers, attributes, version=2,
                                     inputs=v2_inputs(threshold_shape is not None, residual_shape is not None),
                                     graph_inputs={"R": residual_shape} if residual_shape is not None else None))
        feeds = {"X": list(x_shape), **({"R": list(residual_shape)} if residual_shape is not None else {})}
        jobs.extend((name, isa, str(path), feeds) for isa in ISAS)

    for i, (name, (relu, residual2_shape)) in enumerate(HOSTILE_V3.items()):
        path = tmp_path / f"v3-{i}.onnx"
        attributes = [helper.make_attribute("in_channels", 8), helper.make_attribute("kernel_shape", [3, 3])]
        if relu is not None:
            attributes.append(helper.make_attribute("residual_relu", relu))
        residual2 = {"R2": residual2_shape} if residual2_shape is not None else {}
        path.write_bytes(model_bytes("BinaryConv2d", (1, 8, 5, 5),
                                     {"W": np.zeros((4, 3, 3, 1), np.int64), "multiplier": np.ones(4, np.float32),
                                      "bias": np.zeros(4, np.float32)}, attributes, version=3,
                                     inputs=v2_inputs(False, True, bool(residual2)),
                                     graph_inputs={"R": (1, 4, 3, 3), **residual2}))
        feeds = {"X": [1, 8, 5, 5], "R": [1, 4, 3, 3], **{k: list(v) for k, v in residual2.items()}}
        jobs.extend((name, isa, str(path), feeds) for isa in ISAS)

    for i, (name, activation) in enumerate(HOSTILE_V4.items()):
        path = tmp_path / f"v4-{i}.onnx"
        path.write_bytes(model_bytes("BinaryConv2d", (1, 8, 5, 5),
                                     {"W": np.zeros((4, 3, 3, 1), np.int64), "multiplier": np.ones(4, np.float32),
                                      "bias": np.zeros(4, np.float32)},
                                     [helper.make_attribute("in_channels", 8), helper.make_attribute("kernel_shape", [3, 3]),
                                      helper.make_attribute("activation", activation)], version=4))
        jobs.extend((name, isa, str(path), {"X": [1, 8, 5, 5]}) for isa in ISAS)

    result = subprocess.run([sys.executable, "-c", HOSTILE_SCRIPT, json.dumps(jobs)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"exit status {result.returncode}:\n{result.stderr[-3000:]}"
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(outcomes) == len(jobs)
    not_refused = {case: outcome for case, outcome in outcomes.items()
                   if not outcome.startswith("error: ") or ("BinaryConv2d: " not in outcome and
                                                            "BinaryLinear: " not in outcome)}
    assert not not_refused, json.dumps(not_refused, indent=1)
