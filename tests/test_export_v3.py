"""``binarize.export`` with version 3 of the binarize operators: a basic block's second Add (its
identity shortcut) and the ReLUs that compute residuals (the activation a double skip carries) move
into the binary ops, checked against the unfused export bit for bit on every kernel path and
against PyTorch; what must stay outside the ops stays; the version a layer runs is checked; and a
version-2 file written by the release before version 3 keeps loading and giving its outputs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
from binarize.converters.ops import PackedBinaryConv2d
from binarize.kernels import available_isas
from binarize.runtime import session

from test_export import assert_runtime_matches_pytorch, binarized
from test_export_v2 import binarize_version, binary_nodes, with_input_thresholds

ISAS = available_isas()
DATA = Path(__file__).resolve().parent / "data"


def consumers(model: onnx.ModelProto) -> dict:
    """tensor name -> the nodes that read it"""
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def test_resnet18_blocks_export_as_their_binary_ops_only(tmp_path):
    """torchvision's ResNet-18 with Bi-Real double skips: all 24 Adds (16 double skips, 8 identity
    shortcuts) and the 13 ReLUs that only fed shortcuts run inside the 16 binary ops, and so does
    the last block's ReLU (the op's activation, version 4: only the pooled head reads it); the 3
    ReLUs the downsample convs read beside a binary op's input stay. Every path gives exactly the
    unfused file's output (the same float additions in the same order), and PyTorch's."""
    bnn, x = binarized("resnet18", "bireal", rprelu=False)
    fused = onnx.load(binarize.export(bnn, tmp_path / "fused.onnx", x[:1]))
    unfused = onnx.load(binarize.export(bnn, tmp_path / "unfused.onnx", x[:1], fuse_residual_adds=False))
    assert (binarize_version(fused), binarize_version(unfused)) == (4, 1)
    before, after = (Counter(node.op_type for node in m.graph.node) for m in (unfused, fused))
    assert (before["Add"], before["Relu"]) == (24, 17)
    assert (after["Add"], after["Relu"], after["BinaryConv2d"]) == (0, 3, 16)
    activations = [a.i for node in binary_nodes(fused) for a in node.attribute if a.name == "activation"]
    assert sorted(activations) == [0] * 15 + [1]
    readers = consumers(fused)
    for relu in (node for node in fused.graph.node if node.op_type == "Relu"):
        assert {reader.op_type for reader in readers[relu.output[0]]} == {"Conv"}
    two_residuals = [node for node in binary_nodes(fused) if len(node.input) == 7 and node.input[6]]
    assert len(two_residuals) == 8  # each block's second conv: its double skip and the block's shortcut
    relu_flags = Counter(tuple(a.ints) for node in binary_nodes(fused) for a in node.attribute
                         if a.name == "residual_relu")
    assert sum(relu_flags.values()) == 16 and relu_flags[(1, 1)] == 5  # 8 blocks, 3 with a conv shortcut
    feed = {fused.graph.input[0].name: x.numpy()}
    for isa in ISAS:
        actual = session(fused.SerializeToString(), threads=1, isa=isa).run(None, feed)[0]
        expected = session(unfused.SerializeToString(), threads=1, isa=isa).run(None, feed)[0]
        np.testing.assert_array_equal(actual, expected, err_msg=isa)
    assert_runtime_matches_pytorch(fused, bnn, x, "resnet18/bireal version 3")


class ReluShortcuts(nn.Module):
    """Two binary convs whose residuals are written four ways: F.relu, torch.relu, x.relu() and an
    nn.ReLU module, and one ReLU that a float op also reads (it must stay)."""

    def __init__(self):
        super().__init__()
        from binarize.methods.xnor import XnorConfig, XnorConv2d
        self.a = XnorConv2d(nn.Conv2d(8, 8, 3, padding=1), XnorConfig())
        self.b = XnorConv2d(nn.Conv2d(8, 8, 3, padding=1), XnorConfig())
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x) + F.relu(x)
        y = y + torch.relu(x - 1)
        z = self.b(y) + y.relu()
        z = z + self.act(y)
        return z, self.head(F.relu(x))


def test_every_way_of_writing_relu_is_fused_and_a_relu_a_float_op_reads_stays(tmp_path):
    torch.manual_seed(0)
    model = ReluShortcuts().eval()
    x = torch.randn(2, 8, 6, 6)
    proto = onnx.load(binarize.export(model, tmp_path / "relus.onnx", x))
    assert binarize_version(proto) == 3
    ops = Counter(node.op_type for node in proto.graph.node)
    assert ops["Add"] == 0 and ops["Relu"] == 1  # F.relu(x) is read by the head conv too
    flags = [tuple(a.ints) for node in binary_nodes(proto) for a in node.attribute if a.name == "residual_relu"]
    assert flags == [(1, 1), (1, 1)]
    assert_every_path_gives_pytorchs_outputs(proto, model, x)


def assert_every_path_gives_pytorchs_outputs(proto: onnx.ModelProto, model: nn.Module, x: torch.Tensor) -> None:
    """Each output of the exported ``proto`` on every kernel path against ``model``'s eval outputs."""
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    for isa in ISAS:
        outputs = session(proto.SerializeToString(), threads=1, isa=isa).run(None, {proto.graph.input[0].name: x.numpy()})
        for actual, reference in zip(outputs, expected):
            np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-5, err_msg=isa)


def test_a_layer_pinned_to_version_2_refuses_a_call_that_needs_version_3():
    signs = torch.where(torch.randn(4, 8, 3, 3) < 0, -1.0, 1.0)
    layer = PackedBinaryConv2d("conv", signs, torch.ones(4), torch.zeros(4), (1, 1), (1, 1, 1, 1), (1, 1))
    x, r = torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5)
    layer.op_version = 2
    layer(x, r)  # one residual: version 2 has it
    with pytest.raises(ValueError, match="op_version = 2, but this call needs version 3"):
        layer(x, r, r)
    with pytest.raises(ValueError, match="op_version = 2, but this call needs version 3"):
        layer(x, r, residual_relu=(1, 0))
    layer.op_version = None
    expected = layer(x) + r.clamp_min(0) + r
    torch.testing.assert_close(layer(x, r, r, residual_relu=(1, 0)), expected, rtol=0, atol=1e-6)


def test_version_2_file_of_the_release_before_version_3_gives_its_outputs():
    """tests/data/cifar_bireal_v2.onnx: the CIFAR ResNet of tests/test_export.py (Bi-Real, double
    skips fused, random input thresholds), exported by commit 97b9c3d (version 2); the .npz holds
    its input and that release's output on the reference path. It must load through
    binarize.runtime and give that output on every path this machine runs."""
    assert_recorded_file_gives_its_outputs("cifar_bireal_v2", 2)


def assert_recorded_file_gives_its_outputs(name: str, version: int) -> None:
    """tests/data/``name``.onnx imports binarize ``version`` and gives, on every path this machine
    runs, the output ``name``.npz recorded for its input."""
    model = onnx.load(DATA / f"{name}.onnx")
    assert binarize_version(model) == version
    recorded = np.load(DATA / f"{name}.npz")
    for isa in ISAS:
        y = session(model.SerializeToString(), threads=1, isa=isa).run(None, {model.graph.input[0].name: recorded["x"]})[0]
        assert np.abs(y - recorded["y"]).max() <= 1e-5 * np.abs(recorded["y"]).max(), isa
        assert (y.argmax(1) == recorded["y"].argmax(1)).all(), isa


def test_version_2_file_matches_the_model_it_was_exported_from():
    """The same file against PyTorch (the model rebuilt from its seed, as when it was written):
    tests/test_export.py's comparison, rounding ties included."""
    bnn, x = binarized("cifar", "bireal", rprelu=False)
    with_input_thresholds(bnn, seed=1)
    model = onnx.load(DATA / "cifar_bireal_v2.onnx")
    recorded = np.load(DATA / "cifar_bireal_v2.npz")
    np.testing.assert_array_equal(x.numpy(), recorded["x"])
    assert_runtime_matches_pytorch(model, bnn, x, "cifar/bireal version-2 file")
