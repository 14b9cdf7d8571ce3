"""``binarize.export`` with version 2 of the binarize operators: double-skip Adds fused into the
binary op (its ``residual`` input) and learnt input thresholds (``threshold``), matched against
PyTorch in ONNX Runtime (tests/test_export.py's comparison, rounding ties included), against the
unfused export bit for bit, and the version-1 export of models that use neither kept unchanged.
(Models whose double skips carry a ReLU export as version 3, which adds to version 2's inputs:
tests/test_export_v3.py.)"""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import onnx
import onnxscript
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import binarize
from binarize.kernels import available_isas
from binarize.layers import BinaryConv2d
from binarize.runtime import session

from test_export import CASES, METHODS, NO_BATCHNORM_CASES, assert_runtime_matches_pytorch, binarized

ISAS = available_isas()


def binarize_version(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain == "binarize")


def binary_nodes(model: onnx.ModelProto) -> list:
    return [node for node in model.graph.node if node.domain == "binarize"]


def with_input_thresholds(bnn: nn.Module, seed: int, low: float = -0.5, high: float = 0.5) -> nn.Module:
    """Every binary layer gets an input_threshold (what the RSign conversion option learns)."""
    generator = torch.Generator().manual_seed(seed)
    for _, layer in binarize.binary_layers(bnn):
        channels = layer.in_channels if isinstance(layer, BinaryConv2d) else layer.in_features
        layer.input_threshold = nn.Parameter(torch.rand(channels, generator=generator) * (high - low) + low)
    return bnn


@pytest.mark.parametrize("case", sorted(CASES))
def test_double_skip_adds_are_fused_and_equal_the_unfused_export_bit_for_bit(case, tmp_path):
    # Without RPReLU (the default; with rprelu=True the RPReLU sits between the folded BatchNorm and
    # the Add, which then has no binary op's output to fuse into: test_rprelu_keeps_the_add_unfused).
    bnn, x = binarized(case, "bireal", rprelu=False)
    fused = onnx.load(binarize.export(bnn, tmp_path / "fused.onnx", x[:1]))
    unfused = onnx.load(binarize.export(bnn, tmp_path / "unfused.onnx", x[:1], fuse_residual_adds=False))
    # (version 3: the shortcuts carry relu(x), which moves into the op as well; ResNet-18 version 4:
    # its last block's ReLU, which only the pooled head reads, runs in the op)
    assert (binarize_version(fused), binarize_version(unfused)) == ({"resnet18": 4, "cifar": 3}[case], 1)
    with_residual = [node for node in binary_nodes(fused) if len(node.input) >= 6 and node.input[5]]
    # Bi-Real: every binary conv's output goes only to its double skip's Add.
    convs = [name for name, layer in binarize.binary_layers(bnn) if isinstance(layer, BinaryConv2d)]
    assert len(with_residual) == len(convs)
    adds = [Counter(node.op_type for node in model.graph.node)["Add"] for model in (fused, unfused)]
    assert adds[1] - adds[0] >= len(convs)
    feed = {fused.graph.input[0].name: x.numpy()}
    for isa in ISAS:
        actual = session(fused.SerializeToString(), threads=1, isa=isa).run(None, feed)[0]
        expected = session(unfused.SerializeToString(), threads=1, isa=isa).run(None, feed)[0]
        np.testing.assert_array_equal(actual, expected, err_msg=isa)  # the same float additions
    assert_runtime_matches_pytorch(fused, bnn, x, f"{case}/bireal fused")


def test_rprelu_keeps_the_add_unfused(tmp_path):
    """With RPReLU on (``rprelu=True``), the double skip adds the RPReLU's output, not the binary op's:
    no Add is fused, and the export still matches PyTorch."""
    bnn, x = binarized("cifar", "bireal", rprelu=True)
    model = onnx.load(binarize.export(bnn, tmp_path / "m.onnx", x[:1]))
    assert not [node for node in binary_nodes(model) if len(node.input) >= 6 and node.input[5]]
    assert_runtime_matches_pytorch(model, bnn, x, "cifar/bireal with RPReLU")


def test_add_of_another_shape_is_not_fused(tmp_path):
    """A binary conv whose output is added to a broadcast per-channel tensor keeps its ONNX Add:
    the op's residual has exactly the output's shape."""
    from binarize.methods.xnor import XnorConfig, XnorConv2d

    class BroadcastAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = XnorConv2d(nn.Conv2d(8, 4, 3, padding=1), XnorConfig())
            self.offset = nn.Parameter(torch.randn(1, 4, 1, 1))

        def forward(self, x):
            return self.conv(x) + self.offset

    model = BroadcastAdd().eval()
    x = torch.randn(2, 8, 5, 5)
    proto = onnx.load(binarize.export(model, tmp_path / "broadcast.onnx", x))
    assert binarize_version(proto) == 1 and [n.op_type for n in proto.graph.node] == ["BinaryConv2d", "Add"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_input_thresholds_export_as_v2_or_later_and_match_pytorch(case, method, tmp_path):
    bnn, x = binarized(case, method)
    with_input_thresholds(bnn, seed=1)
    model = onnx.load(binarize.export(bnn, tmp_path / f"{case}-{method}.onnx", x[:1]))
    assert binarize_version(model) >= 2  # 3 where a double skip's ReLU is fused too
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    thresholds = [initializers[node.input[4]] for node in binary_nodes(model)]
    expected = sorted(tuple(layer.input_threshold.detach().numpy()) for _, layer in binarize.binary_layers(bnn))
    assert sorted(tuple(t) for t in thresholds) == expected  # every layer's own, in float32
    assert_runtime_matches_pytorch(model, bnn, x, f"{case}/{method} thresholds")


def test_threshold_outside_the_hardtanh_keeps_the_clip(tmp_path):
    """sign(hardtanh(x) - t) = sign(x - t) only for -1 < t <= 1: a layer with a threshold beyond
    that range must still read the clipped input, so its Clip is exported."""
    bnn, x = binarized("resnet18", "bireal")
    with_input_thresholds(bnn, seed=2)
    name, layer = next(iter(binarize.binary_layers(bnn)))
    with torch.no_grad():
        layer.input_threshold[: layer.in_channels // 2] = 1.5
    model = onnx.load(binarize.export(bnn, tmp_path / "clip.onnx", x[:1]))
    clipped = {node.output[0] for node in model.graph.node if node.op_type == "Clip"}
    assert sum(node.input[0] in clipped for node in binary_nodes(model)) == 1, name
    assert_runtime_matches_pytorch(model, bnn, x, "resnet18/bireal threshold 1.5")


def test_binarize_input_subtracts_the_threshold_along_the_channel_axis():
    from binarize.methods.xnor import XnorConfig, XnorConv2d, XnorLinear

    torch.manual_seed(0)
    conv = XnorConv2d(nn.Conv2d(6, 4, 3), XnorConfig()).eval()
    linear = XnorLinear(nn.Linear(6, 3), XnorConfig()).eval()
    threshold = torch.randn(6)
    x = torch.randn(2, 6, 5, 5)
    rows = torch.randn(2, 7, 6)
    with torch.no_grad():
        unshifted = conv(x)
        plain_conv, plain_linear = conv(x - threshold.view(1, -1, 1, 1)), linear(rows - threshold)
        conv.input_threshold = nn.Parameter(threshold.clone())
        linear.input_threshold = nn.Parameter(threshold.clone())
        assert torch.equal(conv(x), plain_conv) and torch.equal(linear(rows), plain_linear)
        assert not torch.equal(conv(x), unshifted)


# Digests of files written by the release before version 2 (commit 58b93d3) for these models,
# with torch.onnx's per-node stack traces left out: they name the exporter's source file and
# line, so they differ between two checkouts of the same code. Everything else must not change.
# (case, method, fuse_residual_adds) -> digest. The VGG-11 digest was recorded with fusion on, when
# its ReLUs after binary convs stayed ONNX Relus; since version 4 they run in the ops, so the file
# without version 2-4 features is the one exported with fusion off (byte-identical to that release's).
V1_DIGESTS = {
    ("vgg11", "xnor", False): "0ca0d40e78e37d02671bccf122b3e3147355ebaeeeee55e89375e78cc68d7f4b",
    ("cifar", "bireal", False): "5e982a7cbda379de79b5216e5d1aec493f8214d08839aa4ba81addf48855a607",
}
RECORDED_WITH = {"torch": "2.13.0+cu130", "onnx": "1.23.2", "onnxscript": "0.7.2"}


def without_stack_traces(model: onnx.ModelProto) -> bytes:
    for node in model.graph.node:
        kept = [entry for entry in node.metadata_props if entry.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return model.SerializeToString()


@pytest.mark.parametrize("case, method, fuse", sorted(V1_DIGESTS))
def test_models_without_v2_features_export_as_before(case, method, fuse, tmp_path):
    """No threshold and nothing fused (a model without double skips; a Bi-Real model exported with
    fuse_residual_adds=False): the file is version 1 and, apart from stack traces, byte-identical
    to the one the release before version 2 wrote for the same seed."""
    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__}
    if versions != RECORDED_WITH:
        pytest.skip(f"digests recorded with {RECORDED_WITH}, running {versions}: the exporter's output may differ")
    # The model that release built: no RSign thresholds, no RPReLU (ConvertConfig version 2's options).
    bnn, x = binarized(case, method, cases={**CASES, **NO_BATCHNORM_CASES}, input_threshold=False, rprelu=False)
    model = onnx.load(binarize.export(bnn, tmp_path / "v1.onnx", x[:1], fuse_residual_adds=fuse))
    assert binarize_version(model) == 1
    assert hashlib.sha256(without_stack_traces(model)).hexdigest() == V1_DIGESTS[case, method, fuse]
