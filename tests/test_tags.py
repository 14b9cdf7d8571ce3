"""binarize.tags: what convert's passes record on the graph, and the stages that read it
(the exporter's BatchNorm folding and Hardtanh removal, the trainer's feature maps)."""
import copy
from collections import Counter

import pytest
import torch
from torch import nn

import binarize
from binarize import passes, tags
from binarize.methods.xnor import XnorConfig, XnorConv2d

from test_convert import PlainNet  # conv0 (float) -> conv1 -> conv2 (stride 2, 8 -> 16) -> MaxPool -> conv3 -> fc

# tiny layers: the cost rule (keep_costly_float) would keep them float


def tagged(gm):
    return {node: tags.tag_of(node) for node in gm.graph.nodes if tags.tag_of(node) is not None}


def describe(gm):
    """(role, module class or function name, binary layer's batchnorm) per tagged node, in graph order."""
    def what(node):
        return type(gm.get_submodule(node.target)).__name__ if node.op == "call_module" else str(node.target)
    return [(tag.role, what(node), tag.batchnorm) for node, tag in tagged(gm).items()]


def test_passes_tag_what_they_build():
    bnn = binarize.convert(PlainNet(), "xnor", double_skip=True, rprelu=True, keep_costly_float=False)
    found = describe(bnn)
    binary = [(name, bn) for role, name, bn in found if role == "binary_layer"]
    assert binary == [("XnorConv2d", "bn1"), ("XnorConv2d", "bn2"), ("XnorConv2d", None)]
    assert [n.target for n in bnn.graph.nodes if tags.tag_of(n) and tags.tag_of(n).role == "binary_layer"] == [
        "conv1", "conv2", "conv3"]
    roles = Counter(role for role, _, _ in found)
    # one Hardtanh per binary layer; a new shortcut only for the shape-changing conv2; the ReLU in
    # front of the pool moves behind it for conv3's skip (they commute); three double-skip additions
    assert roles == {"binary_layer": 3, "sign_input": 3, "double_skip": 1, "double_skip_add": 3, "moved_relu": 1,
                     "rprelu": 3}
    assert all(name == "Hardtanh" for role, name, _ in found if role == "sign_input")
    assert [name for role, name, _ in found if role == "double_skip"] == ["Sequential"]
    # average pooling is not commuting: with a PReLU in front, the pool is cloned for the binary layer
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3), nn.Flatten(),
                        nn.Linear(8, 2))
    cloned = describe(binarize.convert(net, "xnor", activation="prelu", double_skip=False, keep_costly_float=False))
    assert [(role, name) for role, name, _ in cloned if role.startswith("sign_input")] == [
        ("sign_input", "PReLU"), ("sign_input_copy", "AvgPool2d")]


def test_tags_survive_recompile_deepcopy_and_state_dict_round_trip():
    bnn = binarize.convert(PlainNet(), "bireal", keep_costly_float=False)
    before = describe(bnn)
    bnn.recompile()
    assert describe(bnn) == before
    assert describe(copy.deepcopy(bnn)) == before
    fresh = binarize.convert(PlainNet(), "bireal", keep_costly_float=False)  # state_dict carries tensors only: re-create, then load
    fresh.load_state_dict(bnn.state_dict())
    assert describe(fresh) == before


def hand_built() -> nn.Sequential:
    """Binary layers assembled by hand (no convert, no tags)."""
    return nn.Sequential(XnorConv2d(nn.Conv2d(8, 8, 3, padding=1), XnorConfig()), nn.BatchNorm2d(8),
                         nn.Hardtanh(), XnorConv2d(nn.Conv2d(8, 8, 3, padding=1), XnorConfig()), nn.ReLU())


def test_feature_maps_are_the_batchnorm_after_each_binary_layer_or_the_layer():
    assert tags.feature_maps(binarize.convert(PlainNet(), "rbcn", keep_costly_float=False)) == ["bn1", "bn2", "conv3"]
    assert tags.feature_maps(binarize.convert(PlainNet(), "rbcn", double_skip=False,
                                             keep_costly_float=False)) == ["bn1", "bn2", "conv3"]
    # untagged graphs follow the same rule (binarize.matchers.following_batchnorm)
    with pytest.warns(UserWarning, match="stay float"):  # trace's note on leaves; binary layers are meant
        traced = passes.trace(hand_built(), leaf_modules=[binarize.BinaryLayer])
    assert not tags.is_tagged(traced.graph)
    assert tags.feature_maps(traced) == ["1", "3"]
    # a model that is not a graph: its binary layers
    assert tags.feature_maps(hand_built()) == ["0", "3"]


def test_a_batchnorm_that_shares_the_layer_output_is_not_the_layer_s():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0, self.conv1, self.bn = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = self.conv1(self.conv0(x))
            return self.fc((self.bn(y) + y).mean((2, 3)))

    bnn = binarize.convert(Shared(), "xnor", keep_costly_float=False)
    assert tags.feature_maps(bnn) == ["conv1"]


@pytest.fixture(scope="module")
def onnx_ops():
    from binarize.converters import to_onnx

    def ops(model, x):
        return Counter(node.op_type for node in to_onnx(model.eval(), x).graph.node)
    return ops


def test_exporter_folds_the_batchnorm_the_tag_names(onnx_ops):
    bnn = binarize.convert(PlainNet(), "xnor", double_skip=False, keep_costly_float=False)
    x = torch.randn(1, 3, 16, 16)
    # bn1 and bn2 fold into the binary convs (bn0 into the float conv0, by the ONNX exporter itself)
    assert onnx_ops(bnn, x)["BatchNormalization"] == 0
    conv1 = next(n for n in bnn.graph.nodes if n.target == "conv1")
    tags.tag(conv1, "binary_layer", batchnorm=None)  # the tag, not the graph's shape, decides
    assert onnx_ops(bnn, x)["BatchNormalization"] == 1


def test_exporter_drops_the_hardtanh_convert_inserted_and_keeps_the_user_s(onnx_ops):
    class OwnHardtanh(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0, self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)
            self.clip, self.fc = nn.Hardtanh(), nn.Linear(8, 2)

        def forward(self, x):
            y = self.conv1(self.clip(self.conv0(x)))  # the user's own Hardtanh
            return self.fc(self.conv2(y.relu()).mean((2, 3)))  # convert replaces this ReLU by a Hardtanh

    bnn = binarize.convert(OwnHardtanh(), "xnor", keep_costly_float=False)
    assert bnn.binarize_plan.binary == ["conv1", "conv2"]
    assert onnx_ops(bnn, torch.randn(1, 3, 12, 12))["Clip"] == 1
    # without tags (a hand-built model) every sign-preserving Hardtanh in front of binary layers goes
    assert "Clip" not in onnx_ops(hand_built(), torch.randn(1, 8, 6, 6))
