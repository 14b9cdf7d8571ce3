"""The C++ BinaryConv2d / BinaryLinear kernels (kernels/) against PyTorch and each other.

Needs the library built by the package build (``pip install -e .`` or
``python setup.py build_ext --inplace``); the tests do not build it themselves.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from binarize import packing
from binarize.kernels import available_isas, library_path

try:
    library_path()
except FileNotFoundError as error:  # make the cause obvious instead of 100 identical errors
    pytest.fail(f"libbinarize_ort is not built: {error}", pytrace=False)

from binarize import runtime  # noqa: E402  (after the library check, for a clearer failure)

ISAS = available_isas()
# Every kernel path the library has; a path this CPU lacks is skipped, never failed.
# (Which paths the CPU offers is tested against /proc/cpuinfo in test_cpu_detection.py.)
ALL_ISAS = ["avx512", "avx512bw", "avx2", "neon", "scalar", "reference"]


def each_isa(test):
    """Runs `test` once per kernel path, skipping the paths this CPU cannot run."""
    marks = {isa: pytest.mark.skipif(isa not in ISAS, reason=f"this CPU cannot run the {isa} path") for isa in ALL_ISAS}
    return pytest.mark.parametrize("isa", [pytest.param(isa, marks=marks[isa]) for isa in ALL_ISAS])(test)


def sign(x: torch.Tensor) -> torch.Tensor:
    """The spec's sign: +1 for x >= 0 (including 0), -1 otherwise."""
    return torch.where(x >= 0, 1.0, -1.0)


def random_signs(rng, shape) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def random_input(rng, shape) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.1] = 0.0  # exact zeros must binarize to +1
    return x


def make_model(op: str, x_shape, initializers: dict, **attributes) -> bytes:
    node = helper.make_node(op, ["X", "W", "multiplier", "bias"], ["Y"], domain="binarize", **attributes)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("binarize", 1)])
    model.ir_version = 10  # onnxruntime 1.31 accepts IR <= 13; onnx 1.23 writes 14
    return model.SerializeToString()


def conv_model(x_shape, w_signs, multiplier, bias, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)) -> bytes:
    m, c, kh, kw = w_signs.shape
    return make_model("BinaryConv2d", x_shape,
                      {"W": packing.pack_weight(w_signs), "multiplier": multiplier, "bias": bias},
                      kernel_shape=[kh, kw], in_channels=c, strides=list(stride), pads=list(pads),
                      dilations=list(dilation))


def torch_conv(x, w_signs, multiplier, bias, stride, pads, dilation) -> np.ndarray:
    top, left, bottom, right = pads
    binarized = F.pad(sign(torch.from_numpy(x)), (left, right, top, bottom))  # zero padding after sign
    d = F.conv2d(binarized.double(), torch.from_numpy(w_signs).double(), stride=stride, dilation=dilation)
    return (d * torch.from_numpy(multiplier).double()[:, None, None] + torch.from_numpy(bias).double()[:, None, None]).numpy()


CONV_CASES = [
    # (N, C, H, W, M, k, stride, pads (top, left, bottom, right), dilation)
    (1, 3, 9, 7, 5, 3, 1, (1, 1, 1, 1), 1),
    (4, 65, 11, 13, 33, 3, 2, (1, 1, 1, 1), 1),
    (1, 129, 10, 6, 40, 5, 1, (2, 2, 2, 2), 1),
    (2, 256, 8, 9, 64, 3, 1, (0, 0, 0, 0), 2),
    (1, 64, 12, 12, 17, 1, 2, (0, 0, 0, 0), 1),
    (1, 65, 7, 12, 9, 3, 1, (2, 0, 1, 2), 1),  # asymmetric pads
    (4, 3, 15, 9, 8, 5, 2, (2, 1, 0, 2), 2),
    (1, 256, 14, 14, 256, 3, 1, (1, 1, 1, 1), 1),
    (1, 129, 5, 5, 70, 5, 1, (4, 4, 4, 4), 1),  # pixels whose taps are mostly padding
]


@each_isa
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "N{}C{}H{}W{}M{}k{}s{}p{}d{}".format(*c))
def test_conv_matches_pytorch_on_every_isa(case, isa):
    n, c, h, w, m, k, stride, pads, dilation = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x = random_input(rng, (n, c, h, w))
    w_signs = random_signs(rng, (m, c, k, k))
    ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
    multiplier = rng.uniform(0.01, 2.0, m).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)

    exact_d = torch_conv(x, w_signs, ones, zeros, (stride, stride), pads, (dilation, dilation))
    expected = torch_conv(x, w_signs, multiplier, bias, (stride, stride), pads, (dilation, dilation))
    integer_model = conv_model(x.shape, w_signs, ones, zeros, (stride, stride), pads, (dilation, dilation))
    scaled_model = conv_model(x.shape, w_signs, multiplier, bias, (stride, stride), pads, (dilation, dilation))
    d = runtime.session(integer_model, threads=1, isa=isa).run(None, {"X": x})[0]
    assert d.shape == exact_d.shape
    np.testing.assert_array_equal(d, exact_d, err_msg=f"integer D differs on {isa}")
    y = runtime.session(scaled_model, threads=2, isa=isa).run(None, {"X": x})[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(), err_msg=isa)


@each_isa
@pytest.mark.parametrize("signs", ["disagree", "agree"])
def test_byte_counters_at_their_largest_counts(signs, isa):
    """Every input sign against every weight sign (or with it) over 3 x 3 x 1024 channels: the
    kernels' per-byte counters take their largest count on every reduction step (8 per step for
    whole words, 32 per 64-channel step for the avx2 byte tables) for hundreds of steps, so a
    counter folded too late overflows here, where random signs would stay far below it."""
    c, m = 1024, 8
    x = -np.ones((1, c, 5, 6), np.float32)  # every bit 1
    w_signs = np.full((m, c, 3, 3), 1.0 if signs == "disagree" else -1.0, np.float32)
    ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
    expected = torch_conv(x, w_signs, ones, zeros, (1, 1), (1, 1, 1, 1), (1, 1))
    d = runtime.session(conv_model(x.shape, w_signs, ones, zeros, pads=(1, 1, 1, 1)), threads=1, isa=isa).run(
        None, {"X": x})[0]
    assert abs(expected).max() == 9 * c
    np.testing.assert_array_equal(d, expected, err_msg=f"integer D differs on {isa}")


@each_isa
@pytest.mark.parametrize("signs", ["disagree", "agree", "random"])
def test_counts_past_16_bits(signs, isa):
    """A reduction of 140,800 sign products (BinaryLinear, 140,800 features): more than 16-bit counts
    hold. The avx2 path counts a tile in 16-bit lanes, half of the inputs in each (a byte's low and
    high nibbles), and folds them into 32-bit totals every 256 flushes (1,792 steps of 64
    products), so the disagreeing signs (every product counted: 70,400 per lane) would wrap
    around there if a fold were missed, and the random ones check the fold's arithmetic."""
    features, m = 140_800, 3
    rng = np.random.default_rng(140_800)
    x = random_input(rng, (2, features)) if signs == "random" else -np.ones((2, features), np.float32)
    w_signs = (random_signs(rng, (m, features)) if signs == "random"
               else np.full((m, features), 1.0 if signs == "disagree" else -1.0, np.float32))
    ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
    expected = (sign(torch.from_numpy(x)).double() @ torch.from_numpy(w_signs).double().T).numpy()
    model = make_model("BinaryLinear", x.shape, {"W": packing.pack_weight(w_signs), "multiplier": ones, "bias": zeros},
                       in_features=features)
    d = runtime.session(model, threads=1, isa=isa).run(None, {"X": x})[0]
    if signs != "random":
        assert abs(expected).max() == features
    np.testing.assert_array_equal(d, expected, err_msg=f"integer D differs on {isa}")


@each_isa
@pytest.mark.parametrize("case", [
    (2, 512, 90, 70, 12, 3, 1, (1, 1, 1, 1)),   # 512 channels of 70 pixels: 4.5 KB a row
    (1, 520, 121, 33, 9, 3, 2, (1, 0, 2, 1)),   # strided, asymmetric pads
    (1, 512, 160, 40, 8, 5, 1, (0, 2, 4, 2)),   # bands whose first rows are padding
], ids=lambda c: "N{}C{}H{}W{}M{}k{}s{}p{}".format(*c))
def test_images_computed_in_bands_match_pytorch(case, isa):
    """Images whose packed input (8 bytes per 64 input channels and pixel) spans several of the
    kernel's 256 KiB bands, each packed just before it is computed: every band must have its
    input rows packed, including the halo rows the band before it packed and the ones past its
    last output row."""
    n, c, h, w, m, k, stride, pads = case
    rng = np.random.default_rng(h * w)
    x = random_input(rng, (n, c, h, w))
    w_signs = random_signs(rng, (m, c, k, k))
    ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
    expected = torch_conv(x, w_signs, ones, zeros, (stride, stride), pads, (1, 1))
    d = runtime.session(conv_model(x.shape, w_signs, ones, zeros, (stride, stride), pads), threads=2, isa=isa).run(
        None, {"X": x})[0]
    np.testing.assert_array_equal(d, expected, err_msg=f"integer D differs on {isa}")


@each_isa
def test_linear_rows_computed_in_bands_match_pytorch(isa):
    """BinaryLinear over 3,000 rows of 1,000 features (128 bytes of packed signs a row, so
    several 256 KiB bands of rows)."""
    rng = np.random.default_rng(3000)
    x = random_input(rng, (3000, 1000))
    w_signs = random_signs(rng, (20, 1000))
    ones, zeros = np.ones(20, np.float32), np.zeros(20, np.float32)
    expected = (sign(torch.from_numpy(x)).double() @ torch.from_numpy(w_signs).double().T).numpy()
    model = make_model("BinaryLinear", x.shape, {"W": packing.pack_weight(w_signs), "multiplier": ones, "bias": zeros},
                       in_features=1000)
    d = runtime.session(model, threads=2, isa=isa).run(None, {"X": x})[0]
    np.testing.assert_array_equal(d, expected, err_msg=f"integer D differs on {isa}")


@pytest.mark.skipif("avx2" not in ISAS, reason="this CPU cannot run the avx2 path")
@pytest.mark.parametrize("pad", [5793, 8192])
def test_padded_image_limit_counts_64_channel_words_on_every_path(pad):
    """The operator's limit on the zero-padded packed image (SPEC.md: 2^28 words of 64 channels) is the
    same on every path: an image of 11,587^2 words (over half the limit) runs on the avx2 path (there
    on the reference path: its 1.0 GiB of packed words are just over the kernel's 1 GiB for a
    call's packed input), one of 16,385^2 (over the limit) is refused with the same message as on
    the reference path."""
    side = 1 + 2 * pad
    model = conv_model((1, 64, 1, 1), np.ones((2, 64, 1, 1), np.float32), np.ones(2, np.float32),
                       np.array([0.5, -0.5], np.float32), stride=(side, side), pads=(pad, pad, pad, pad))
    x = np.ones((1, 64, 1, 1), np.float32)
    if side * side <= 2**28:
        y = runtime.session(model, threads=1, isa="avx2").run(None, {"X": x})[0]
        np.testing.assert_array_equal(y, np.array([0.5, -0.5], np.float32).reshape(1, 2, 1, 1))  # only padding taps
    else:
        messages = []
        for isa in ("avx2", "reference"):
            with pytest.raises(Exception, match="packed words exceeds the limit") as error:
                runtime.session(model, threads=1, isa=isa).run(None, {"X": x})
            messages.append(str(error.value))
        assert messages[0] == messages[1]


@each_isa
@pytest.mark.parametrize("features,rows_shape", [(3, (1,)), (64, (4,)), (65, (2, 3)), (300, (5,)), (1024, (2,))])
def test_linear_matches_pytorch_on_every_isa(features, rows_shape, isa):
    rng = np.random.default_rng(features)
    out_features = 37
    x = random_input(rng, rows_shape + (features,))
    w_signs = random_signs(rng, (out_features, features))
    multiplier = rng.uniform(0.01, 2.0, out_features).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    expected = (sign(torch.from_numpy(x)).double() @ torch.from_numpy(w_signs).double().T).numpy() * multiplier + bias
    model = make_model("BinaryLinear", x.shape, {"W": packing.pack_weight(w_signs), "multiplier": multiplier,
                                                 "bias": bias}, in_features=features)
    y = runtime.session(model, threads=2, isa=isa).run(None, {"X": x})[0]
    assert y.shape == rows_shape + (out_features,)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(), err_msg=isa)


@each_isa
def test_weights_as_graph_input_are_packed_per_call(isa):
    """W fed at run time (not a constant initializer) takes the per-call weight path."""
    rng = np.random.default_rng(7)
    x = random_input(rng, (2, 70, 6, 5))
    w_signs = random_signs(rng, (12, 70, 3, 3))
    ones, zeros = np.ones(12, np.float32), np.zeros(12, np.float32)
    node = helper.make_node("BinaryConv2d", ["X", "W", "multiplier", "bias"], ["Y"], domain="binarize",
                            kernel_shape=[3, 3], in_channels=70, pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape)),
                      helper.make_tensor_value_info("W", TensorProto.INT64, [12, 3, 3, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(ones, "multiplier"), numpy_helper.from_array(zeros, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("binarize", 1)])
    model.ir_version = 10
    expected = torch_conv(x, w_signs, ones, zeros, (1, 1), (1, 1, 1, 1), (1, 1))
    y = runtime.session(model.SerializeToString(), isa=isa).run(None, {"X": x, "W": packing.pack_weight(w_signs)})[0]
    np.testing.assert_array_equal(y, expected, err_msg=isa)


def test_pack_bits_layout_and_roundtrip():
    signs = np.ones((2, 130, 3, 1), np.float32)
    signs[0, 0, 0, 0] = -1     # bit 0 of word 0
    signs[0, 65, 1, 0] = -1    # bit 1 of word 1
    signs[1, 129, 2, 0] = -1   # bit 1 of word 2 (the last, partial word)
    packed = packing.pack_weight(signs)
    assert packed.shape == (2, 3, 1, 3) and packed.dtype == np.int64
    assert packed[0, 0, 0].tolist() == [1, 0, 0]
    assert packed[0, 1, 0].tolist() == [0, 2, 0]
    assert packed[1, 2, 0].tolist() == [0, 0, 2]
    assert np.count_nonzero(packed) == 3
    full = -np.ones((1, 64), np.float32)
    assert packing.pack_weight(full).tolist() == [[-1]]  # all 64 bits set = int64 -1
    rng = np.random.default_rng(0)
    random = random_signs(rng, (5, 200, 3, 2))
    np.testing.assert_array_equal(packing.unpack_weight(packing.pack_weight(random), 200), random)
    with pytest.raises(ValueError):
        packing.pack_bits(np.zeros((2, 3)))


def test_forcing_an_unknown_isa_is_an_error():
    model = conv_model((1, 3, 4, 4), np.ones((2, 3, 1, 1), np.float32), np.ones(2, np.float32), np.zeros(2, np.float32))
    with pytest.raises(Exception, match="BinaryConv2d: session config binarize.isa=sse9 is not one of "
                                        "avx512, avx512bw, avx2, neon, scalar, reference"):
        runtime.session(model, isa="sse9")


# ---- malformed models: an ORT exception naming the op and the problem, never a crash ----------

def _conv_initializers(m=4, c=8, k=3, words=None):
    words = packing.packed_words(c) if words is None else words
    return {"W": np.zeros((m, k, k, words), np.int64), "multiplier": np.ones(m, np.float32),
            "bias": np.zeros(m, np.float32)}


MALFORMED = {
    "wrong packed length": (
        make_model("BinaryConv2d", (1, 8, 5, 5), _conv_initializers(words=2), kernel_shape=[3, 3], in_channels=8),
        (1, 8, 5, 5), "packed weight W has shape"),
    "negative pads": (
        make_model("BinaryConv2d", (1, 8, 5, 5), _conv_initializers(), kernel_shape=[3, 3], in_channels=8,
                   pads=[1, -1, 1, 1]), (1, 8, 5, 5), "'pads' must be 4 non-negative"),
    "missing attribute": (
        make_model("BinaryConv2d", (1, 8, 5, 5), _conv_initializers(), kernel_shape=[3, 3]),
        (1, 8, 5, 5), "missing required attribute 'in_channels'"),
    "group 2": (
        make_model("BinaryConv2d", (1, 8, 5, 5), _conv_initializers(), kernel_shape=[3, 3], in_channels=8, group=2),
        (1, 8, 5, 5), "'group' = 2 is not supported"),
    "zero strides": (
        make_model("BinaryConv2d", (1, 8, 5, 5), _conv_initializers(), kernel_shape=[3, 3], in_channels=8,
                   strides=[0, 1]), (1, 8, 5, 5), "'strides' must be 2 positive"),
    "input channels differ from attribute": (
        make_model("BinaryConv2d", (1, 9, 5, 5), _conv_initializers(), kernel_shape=[3, 3], in_channels=8),
        (1, 9, 5, 5), "X has 9 channels, attribute in_channels is 8"),
    "multiplier length": (
        make_model("BinaryConv2d", (1, 8, 5, 5), {**_conv_initializers(), "multiplier": np.ones(3, np.float32)},
                   kernel_shape=[3, 3], in_channels=8), (1, 8, 5, 5), "multiplier has shape [3], expected [4]"),
    "input rank": (
        make_model("BinaryConv2d", (8, 5, 5), _conv_initializers(), kernel_shape=[3, 3], in_channels=8),
        (8, 5, 5), "X must have rank 4"),
    "input smaller than kernel": (
        make_model("BinaryConv2d", (1, 8, 2, 5), _conv_initializers(), kernel_shape=[3, 3], in_channels=8),
        (1, 8, 2, 5), "smaller than the dilated kernel"),
    "non-zero unused weight bits": (
        make_model("BinaryConv2d", (1, 8, 5, 5), {**_conv_initializers(), "W": np.full((4, 3, 3, 1), 1 << 9, np.int64)},
                   kernel_shape=[3, 3], in_channels=8), (1, 8, 5, 5), "non-zero unused high bits"),
    "linear wrong packed length": (
        make_model("BinaryLinear", (2, 100), {"W": np.zeros((3, 1), np.int64), "multiplier": np.ones(3, np.float32),
                                              "bias": np.zeros(3, np.float32)}, in_features=100),
        (2, 100), "packed weight W has shape [3, 1], expected [M, 2]"),
    "linear features differ": (
        make_model("BinaryLinear", (2, 64), {"W": np.zeros((3, 2), np.int64), "multiplier": np.ones(3, np.float32),
                                             "bias": np.zeros(3, np.float32)}, in_features=100),
        (2, 64), "X has 64 features in its last axis, attribute in_features is 100"),
    "linear missing attribute": (
        make_model("BinaryLinear", (2, 64), {"W": np.zeros((3, 1), np.int64), "multiplier": np.ones(3, np.float32),
                                             "bias": np.zeros(3, np.float32)}),
        (2, 64), "missing required attribute 'in_features'"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_model_raises_with_message(name):
    model, x_shape, message = MALFORMED[name]
    op = "BinaryLinear" if name.startswith("linear") else "BinaryConv2d"
    with pytest.raises(Exception) as info:
        runtime.session(model).run(None, {"X": np.ones(x_shape, np.float32)})
    assert f"{op}: " in str(info.value) and message in str(info.value), str(info.value)


def test_malformed_models_do_not_crash_the_process(tmp_path):
    """Same models in a fresh interpreter: it must exit normally after every error."""
    paths = []
    for i, name in enumerate(MALFORMED):
        model, x_shape, _ = MALFORMED[name]
        path = tmp_path / f"{i}.onnx"
        path.write_bytes(model)
        paths.append((str(path), x_shape))
    script = textwrap.dedent(f"""
        import numpy as np
        from binarize import runtime
        errors = 0
        for path, shape in {paths!r}:
            try:
                runtime.session(path).run(None, {{"X": np.ones(shape, np.float32)}})
            except Exception:
                errors += 1
        print("errors", errors)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"errors {len(MALFORMED)}" in result.stdout
