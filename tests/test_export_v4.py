"""``binarize.export`` with version 4 of BinaryConv2d: a parameter-free shortcut without pooling (a
widening layer's tiled channels, a narrowing layer's group means) is no ONNX node of its own; the
binary op reads the shortcut's input as its residual and tiles or averages it; a ReLU, ReLU6 or
HardSwish that alone reads a binary conv's output runs in the op. Checked against the
unfused export and PyTorch on every kernel path; a pooling shortcut stays outside; the version a
layer runs is checked; and a version-3 file written by the release before version 4 keeps loading
and giving its outputs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import binarize
from binarize.converters.ops import PackedBinaryConv2d
from binarize.kernels import available_isas
from binarize.passes import ParameterFreeShortcut
from binarize.runtime import session

from test_export import assert_runtime_matches_pytorch, binarized
from test_export_v2 import binarize_version, binary_nodes, with_input_thresholds
from test_export_v3 import assert_every_path_gives_pytorchs_outputs, assert_recorded_file_gives_its_outputs

ISAS = available_isas()
DATA = Path(__file__).resolve().parent / "data"
MOBILENET = {"mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), 64, {})}


def residual_channels(model: onnx.ModelProto) -> list:
    """(Y's channels, residual's channels) of every binary node with a residual, from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    return [(shapes[node.output[0]][1], shapes[node.input[5]][1])
            for node in binary_nodes(model) if len(node.input) > 5 and node.input[5]]


def test_mobilenet_v2_shortcuts_run_inside_the_binary_ops(tmp_path):
    """MobileNetV2 (biper, default convert): its 24 binary 1x1 layers widen or narrow the channels,
    and every parameter-free shortcut's Concat or ReduceMean goes into a version-4 op. Every path
    gives the unfused file's output (the group means summed in another order: within float32
    rounding), and PyTorch's."""
    bnn, x = binarized("mobilenet_v2", "biper", cases=MOBILENET)
    shortcuts = [m for m in bnn.modules() if isinstance(m, ParameterFreeShortcut)]
    widening = sum(m.out_channels > m.in_channels for m in shortcuts)
    fused = onnx.load(binarize.export(bnn, tmp_path / "fused.onnx", x[:1]))
    unfused = onnx.load(binarize.export(bnn, tmp_path / "unfused.onnx", x[:1], fuse_residual_adds=False))
    assert (binarize_version(fused), binarize_version(unfused)) == (4, 1)
    before, after = (Counter(node.op_type for node in m.graph.node) for m in (unfused, fused))
    assert widening > 0 and len(shortcuts) > widening
    assert (before["Concat"], after["Concat"]) == (widening, 0)
    assert before["ReduceMean"] - after["ReduceMean"] == len(shortcuts) - widening
    ratios = residual_channels(fused)
    assert sum(y > r for y, r in ratios) == widening and sum(y < r for y, r in ratios) == len(shortcuts) - widening
    # The expansion layers' ReLU6 runs in the op; the float convs' stay.
    relu6 = sum(a.i == 2 for node in binary_nodes(fused) for a in node.attribute if a.name == "activation")
    assert relu6 > 0 and before["Clip"] - after["Clip"] == relu6
    producers = {output: node.op_type for node in fused.graph.node for output in node.output}
    assert all(producers[node.input[0]] != "BinaryConv2d" for node in fused.graph.node if node.op_type == "Clip")
    feed = {fused.graph.input[0].name: x.numpy()}
    for isa in ISAS:
        actual = session(fused.SerializeToString(), threads=1, isa=isa).run(None, feed)[0]
        expected = session(unfused.SerializeToString(), threads=1, isa=isa).run(None, feed)[0]
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=isa)
    assert_runtime_matches_pytorch(fused, bnn, x, "mobilenet_v2/biper version 4")


def test_conv_shortcuts_give_residuals_of_y_shape(tmp_path):
    """shortcut="conv" gives the shape-changing layers Bi-Real's float 1x1 conv shortcut (the cost
    rule would keep them all float with it): its output has Y's shape, so every residual does."""
    bnn, x = binarized("mobilenet_v2", "biper", cases=MOBILENET, shortcut="conv", keep_costly_float=False)
    proto = onnx.load(binarize.export(bnn, tmp_path / "conv_shortcuts.onnx", x[:1]))
    ratios = residual_channels(proto)
    assert ratios and all(y == r for y, r in ratios)


class WidenTwice(nn.Module):
    """Two binary 1x1 convs 8 -> 16 with parameter-free shortcuts: one without pooling (fused), one
    after a stride 2 whose shortcut pools first (stays an AveragePool and a Concat)."""

    def __init__(self):
        super().__init__()
        from binarize.methods.xnor import XnorConfig, XnorConv2d
        self.a = XnorConv2d(nn.Conv2d(8, 16, 1), XnorConfig())
        self.b = XnorConv2d(nn.Conv2d(8, 16, 1, stride=2), XnorConfig())
        self.same = ParameterFreeShortcut((1, 1), 8, 16)
        self.pooled = ParameterFreeShortcut((2, 2), 8, 16)

    def forward(self, x):
        return self.a(x) + self.same(x), self.b(x) + self.pooled(x)


def test_only_a_shortcut_without_pooling_is_fused(tmp_path):
    torch.manual_seed(0)
    model = WidenTwice().eval()
    x = torch.randn(2, 8, 6, 6)
    proto = onnx.load(binarize.export(model, tmp_path / "widen.onnx", x))
    assert binarize_version(proto) == 4
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["Concat"] == 1 and ops["AveragePool"] == 1 and ops["Add"] == 0
    assert sorted(residual_channels(proto)) == [(16, 8), (16, 16)]
    assert_every_path_gives_pytorchs_outputs(proto, model, x)


class Activations(nn.Module):
    """Binary convs followed by ReLU6 (module and function), HardSwish (module and function) and a ReLU
    whose input another op also reads (it must stay outside)."""

    def __init__(self):
        super().__init__()
        from binarize.methods.xnor import XnorConfig, XnorConv2d
        self.convs = nn.ModuleList(XnorConv2d(nn.Conv2d(8, 8, 3, padding=1), XnorConfig()) for _ in range(5))
        self.relu6, self.hardswish = nn.ReLU6(), nn.Hardswish()

    def forward(self, x):
        a, b, c, d = (self.convs[0](x), self.convs[1](x), self.convs[2](x), self.convs[3](x))
        e = self.convs[4](x)
        return self.relu6(a), F.relu6(b), self.hardswish(c), F.hardswish(d), torch.relu(e) + e


def test_relu6_and_hardswish_after_a_binary_conv_run_in_the_op(tmp_path):
    torch.manual_seed(0)
    model = Activations().eval()
    x = torch.randn(2, 8, 6, 6) * 3
    proto = onnx.load(binarize.export(model, tmp_path / "activations.onnx", x))
    assert binarize_version(proto) == 4
    activations = [a.i for node in binary_nodes(proto) for a in node.attribute if a.name == "activation"]
    assert sorted(activations) == [0, 2, 2, 3, 3]
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["Clip"] == 0 and ops["HardSwish"] == 0 and ops["Relu"] == 1
    assert_every_path_gives_pytorchs_outputs(proto, model, x)


def test_a_layer_pinned_to_version_3_refuses_a_residual_of_another_channel_count():
    signs = torch.where(torch.randn(8, 4, 1, 1) < 0, -1.0, 1.0)
    layer = PackedBinaryConv2d("conv", signs, torch.ones(8), torch.zeros(8), (1, 1), (0, 0, 0, 0), (1, 1))
    x = torch.randn(1, 4, 5, 5)
    narrow, wide = torch.randn(1, 2, 5, 5), torch.randn(1, 24, 5, 5)
    layer.op_version = 3
    layer(x, torch.randn(1, 8, 5, 5))  # Y's shape: version 3 has it
    with pytest.raises(ValueError, match="op_version = 3, but this call needs version 4"):
        layer(x, narrow)
    with pytest.raises(ValueError, match="op_version = 3, but this call needs version 4"):
        layer(x, activation=2)
    layer.op_version = None
    torch.testing.assert_close(layer(x, activation=2), layer(x).clamp(0, 6), rtol=0, atol=0)
    torch.testing.assert_close(layer(x, narrow), layer(x) + narrow.repeat(1, 4, 1, 1), rtol=0, atol=1e-6)
    expected = layer(x) + wide.clamp_min(0).unflatten(1, (8, 3)).mean(2)
    torch.testing.assert_close(layer(x, wide, residual_relu=(1, 0)), expected, rtol=1e-6, atol=1e-6)


def test_version_3_file_of_the_release_before_version_4_gives_its_outputs():
    """tests/data/cifar_bireal_v3.onnx: the CIFAR ResNet of tests/test_export.py (Bi-Real, double
    skips and their ReLUs fused, random input thresholds), exported by commit 36a22ca (version 3);
    the .npz holds its input and that release's output on the reference path. It must load through
    binarize.runtime and give that output on every path this machine runs, and match the model
    rebuilt from its seed."""
    assert_recorded_file_gives_its_outputs("cifar_bireal_v3", 3)
    bnn, x = binarized("cifar", "bireal", rprelu=False)
    with_input_thresholds(bnn, seed=1)
    np.testing.assert_array_equal(x.numpy(), np.load(DATA / "cifar_bireal_v3.npz")["x"])
    assert_runtime_matches_pytorch(onnx.load(DATA / "cifar_bireal_v3.onnx"), bnn, x, "cifar/bireal version-3 file")
