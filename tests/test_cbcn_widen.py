"""CBCN's layout "widen" (issue 10): the paper's CBConv, every feature map between the first and the
last binary layer carrying K orientation channels (eqs. 4-6, fig. 4-5), against independent
references: an explicit K^2-wide float conv, the xnor network's MAC count, PyTorch vs ONNX Runtime.
Each test names the mutation of the code it was seen to catch."""
import sys
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import binarize
from binarize import checkpoint as ckpt
from binarize import tags
from binarize.methods.cbcn import CBCNConfig
from binarize.models import resnet_small
from binarize.orientations import PerOrientation
from binarize.quantizers import binary_sign

sys.path.insert(0, str(Path(__file__).parent))
from test_export import CASES, assert_runtime_matches_pytorch, trained_batchnorms  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py's

# tiny layers: the cost rule (keep_costly_float) would keep them float


def resnet8():
    torch.manual_seed(0)
    return resnet_small(num_classes=10, in_channels=1, blocks=(1, 1, 1)).eval()


def widen(model, k=4, **options):
    return binarize.convert(model, "cbcn", orientations=k, layout="widen", **options)


@pytest.mark.parametrize("k", [2, 4])
def test_every_map_between_binary_layers_is_k_wide_and_the_classifier_sees_the_float_width(k):
    """Mutations caught: the first binary layer's input not replicated (copy_orientations returning
    its input); the float modules (BatchNorms, downsample branches) left at the float width."""
    model = resnet8()
    bnn = widen(model, k)
    float_convs = dict(model.named_modules())
    for name, layer in binarize.binary_layers(bnn):
        source = float_convs[name]
        assert (layer.in_channels, layer.out_channels) == (k * source.in_channels, k * source.out_channels)
        assert layer.weight.shape == source.weight.shape  # the learned filters only (eq. 2)
        assert layer.orientations == 1 and layer.feature_orientations == k  # nothing max-reduced per layer
    for name in tags.feature_maps(bnn):  # the BatchNorm after each binary layer
        assert bnn.get_submodule(name).num_features == k * float_convs[name].num_features
    for stage in ("4", "5"):  # the downsample branches: a float 1x1 conv per orientation, a K-wide BatchNorm
        conv, bn = (bnn.get_submodule(f"{stage}.downsample.{i}") for i in (0, 1))
        assert isinstance(conv, PerOrientation) and conv.orientations == k
        assert bn.num_features == k * float_convs[f"{stage}.downsample.1"].num_features
    roles = [tags.tag_of(n).role for n in bnn.graph.nodes if tags.tag_of(n) is not None]
    assert roles.count("orientation_pool") == 1  # once, before the classifier
    seen = {}
    hooks = [bnn.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: seen.__setitem__(name, args[0].shape[1])) for name in ("3.conv1", "8")]
    x = torch.randn(2, 1, 28, 28)
    assert bnn(x).shape == (2, 10)
    for hook in hooks:
        hook.remove()
    assert seen == {"3.conv1": k * 16, "8": 64}


def test_first_binary_layer_reads_k_copies_of_its_float_input():
    """Section 3.2: "every channel of the network input is replicated". With K = 1 the widened network
    is the max layout's, and with copies the first binary layer's output is the explicit reference.
    Mutation caught: replicating with zeros after the first copy."""
    model = resnet8()
    k = 4
    bnn = widen(model, k)
    stem = nn.Sequential(model[0], model[1])
    inputs = {}
    hook = bnn.get_submodule("3.conv1").register_forward_pre_hook(lambda m, args: inputs.__setitem__("x", args[0]))
    x = torch.randn(2, 1, 28, 28)
    bnn(x)
    hook.remove()
    expected = stem(x)
    assert torch.equal(binary_sign(inputs["x"]), binary_sign(torch.cat([expected] * k, 1)))
    one = widen(model, 1)
    same = binarize.convert(model, "cbcn", orientations=1, layout="max")
    assert torch.allclose(one(x), same(x), atol=1e-6)


def test_widened_layer_is_the_k_squared_wide_binary_conv_and_its_gradient_sums_the_copies():
    """Eq. 5 with the CiF of fig. 4a (each learned filter copied over the K input orientations and
    rotated by m_j): the layer equals F.conv2d of the binarized K * C_in input with the explicit
    K * C_out x K * C_in circulant weights, and autograd through that reference gives the layer's
    gradients (eq. 8: the sum over the K^2 copies). Mutations caught: averaging instead of summing the
    input orientations; export_weight without the copies over the input orientations."""
    torch.manual_seed(0)
    k, c_in, c_out = 4, 3, 5
    net = widen(nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=True)), k, keep_first=False, keep_last=False,
                keep_costly_float=False)
    layer = next(m for _, m in binarize.binary_layers(net))
    assert layer.bias.shape == (k * c_out,)
    with torch.no_grad():
        layer.bias.copy_(torch.randn(k * c_out))
    x = torch.randn(2, k * c_in, 6, 6, requires_grad=True)
    y = layer(x)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()

    signs, scale = layer.export_weight()
    assert signs.shape == (k * c_out, k * c_in, 3, 3)
    for j in range(k):  # orientation j of every output: the learned filter turned j quarter turns, on every input copy
        for i in range(k):
            assert torch.equal(signs[j * c_out:(j + 1) * c_out, i * c_in:(i + 1) * c_in],
                               binary_sign(torch.rot90(layer.latent_weight.detach(), j, dims=(2, 3))))
    reference = F.conv2d(binary_sign(x.detach()), signs * scale.view(-1, 1, 1, 1), layer.bias.detach(), padding=1)
    assert torch.allclose(y, reference, atol=1e-5)

    weight = layer.latent_weight.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    copies = torch.cat([torch.rot90(weight, j, dims=(2, 3)) for j in range(k)]).repeat(1, k, 1, 1)
    wide_scale = weight.abs().mean(dim=(1, 2, 3)).repeat(k).view(-1, 1, 1, 1)
    gaussian = layer.weight_estimator(copies)
    activations = layer.binarize_input(x_ref)
    y_ref = F.conv2d(activations, wide_scale * gaussian, layer.bias.detach(), padding=1)
    (y_ref * upstream).sum().backward()
    assert torch.allclose(layer.weight.grad, weight.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_binary_macs_are_k_squared_those_of_xnor(k):
    """What binarize.summary shows: widen K^2, max K times the binary MACs of the same network
    binarized with xnor (with double skips, the same graph). Mutation caught: the widened layer's
    in_channels left at the float count (summary then shows K)."""
    model = resnet8()
    size = (1, 1, 28, 28)
    xnor = binarize.summary(binarize.convert(model, "xnor", double_skip=True), size).binary_macs
    wide = binarize.summary(widen(model, k), size)
    pooled = binarize.summary(binarize.convert(model, "cbcn", orientations=k, layout="max"), size)
    assert wide.binary_macs == k * k * xnor
    assert pooled.binary_macs == k * xnor
    assert wide.binary_params == pooled.binary_params  # the learned filters, 1 bit each


def test_per_orientation_module_runs_each_orientation_with_the_same_weights():
    """Orientation j of the output is the module applied to orientation j of the input, forward and
    backward. Mutation caught: PerOrientation detaching its input."""
    torch.manual_seed(0)
    k, c = 4, 3
    conv = nn.Conv2d(c, 5, 1, stride=2)
    x = torch.randn(2, k * c, 6, 6, requires_grad=True)
    y = PerOrientation(conv, k)(x)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = torch.cat([conv(x_ref[:, j * c:(j + 1) * c]) for j in range(k)], 1)
    (y_ref * upstream).sum().backward()
    assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(x.grad, x_ref.grad, atol=1e-6)


def test_gradients_reach_every_parameter_through_the_widened_graph():
    """Mutation caught: the per-orientation module run under torch.no_grad()."""
    bnn = widen(resnet8()).train()
    x = torch.randn(4, 1, 28, 28)
    torch.nn.functional.cross_entropy(bnn(x), torch.tensor([0, 1, 2, 3])).backward()
    missing = [name for name, p in bnn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_state_dict_round_trip_and_checkpoint_recipe_rebuild_the_widened_model(tmp_path):
    """A student checkpoint's recipe (the convert config as versioned plain data) rebuilds the widened
    model, which loads the weights and gives the same output. Mutation caught: ``layout`` a plain
    class attribute of CBCNConfig instead of a field (not in the plain data, not an option)."""
    model = resnet8()
    bnn = widen(model).train()
    bnn(torch.randn(8, 1, 28, 28))  # move the running statistics
    bnn.eval()
    weights = tmp_path / "float.pt"
    torch.save(model.state_dict(), weights)
    recipe = ckpt.make_recipe("binarize.models:resnet_small", bnn.binarize_config, weights,
                              num_classes=10, in_channels=1, blocks=[1, 1, 1])
    path = tmp_path / "student.pt"
    ckpt.atomic_save(ckpt.student_checkpoint(bnn, recipe), path)
    rebuilt, _ = ckpt.load_student(path)
    assert rebuilt.binarize_config.layout == "widen"
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(rebuilt.eval()(x), bnn(x))
    again = widen(model)
    again.load_state_dict(bnn.state_dict())
    assert torch.equal(again.eval()(x), bnn(x))


def test_version_1_and_2_data_rebuild_the_max_layout():
    """CBCNConfig version 3 added ``layout`` (and, with every method, ``input_threshold`` and ``rprelu``):
    older plain data described max-over-orientations layers without either. Mutation caught: no
    version-2 upgrade entry; a CBCN upgrade that drops ConvertConfig's own version-2 step. (An upgrade
    that lets ``layout`` take its default passes while the default is "max": the two then build the
    same model.)"""
    current = CBCNConfig(orientations=2, layout="widen").to_data()
    assert current["version"] == 6 and current["layout"] == "widen"
    version_2 = {k: v for k, v in current.items()
                 if k not in ("layout", "input_threshold", "rprelu", "cost_model", "latent_gain",
                              "batchnorm_refresh_samples")} | {"version": 2}
    def read(options):
        return ckpt.config_from_data({"method": "cbcn", "options": options})

    assert read(current).layout == "widen"
    old = read(version_2)
    assert (old.layout, old.input_threshold, old.rprelu, old.latent_gain, old.batchnorm_refresh_samples) == \
        ("max", False, False, 1.0, 0)
    version_1 = {k: v for k, v in version_2.items() if k not in ("shortcut", "keep_costly_float")} | {"version": 1}
    old = read(version_1)
    assert (old.layout, old.shortcut, old.keep_costly_float, old.orientations) == ("max", "conv", False, 2)
    with pytest.raises(ValueError, match="layout='wide': expected one of"):
        CBCNConfig(layout="wide")


@pytest.mark.parametrize("case", sorted(CASES))
def test_widened_model_exports_and_matches_pytorch_in_onnx_runtime(case, tmp_path):
    """test_export's bar (<= 1e-4 relative, same top-1; rounding ties reported) for layout "widen":
    the K * C_out outputs are ordinary output channels of the packed op (no ReduceMax), the BatchNorm
    after each binary conv folds into it. Mutations caught: export_weight without the copies over the
    input orientations; the sign inputs left in front of the copies (a Clip stays, resnet18)."""
    build, size, options = CASES[case]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    bnn = widen(trained_batchnorms(build(), generator), **options).eval()
    x = torch.randn(8, 3, size, size, generator=generator)
    model = onnx.load(binarize.export(bnn, tmp_path / f"{case}.onnx", x[:1]))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("BinaryConv2d") == sum(isinstance(m, nn.Conv2d) for _, m in binarize.binary_layers(bnn))
    assert "ReduceMax" in ops and ops.count("ReduceMax") == 1  # the one pool before the classifier
    assert "Clip" not in ops  # the sign inputs run on the copies and are dropped
    assert_runtime_matches_pytorch(model, bnn, x, f"{case}/cbcn widen")


def test_widened_layers_learn_k_wide_thresholds_that_export_as_the_op_s_threshold(tmp_path):
    """RSign on a widened layer: one threshold per channel of the K-wide map it reads (K * C), exported
    as BinaryConv2d v2's threshold input and matching PyTorch. Mutation caught: the threshold sized by
    the float conv's C (before the method widens the layer)."""
    torch.manual_seed(0)
    bnn = widen(resnet_small(in_channels=1, blocks=(1, 1, 1)), k=2).eval()
    with torch.no_grad():
        for _, layer in binarize.binary_layers(bnn):
            assert layer.input_threshold.shape == (layer.in_channels,) and layer.feature_orientations == 2
            layer.input_threshold.uniform_(-0.5, 0.5)
    x = torch.randn(4, 1, 28, 28)
    model = onnx.load(binarize.export(bnn, tmp_path / "widen.onnx", x[:1]))
    thresholds = [node for node in model.graph.node if node.domain == "binarize" and len(node.input) > 4
                  and node.input[4]]
    assert len(thresholds) == len(list(binarize.binary_layers(bnn)))
    assert_runtime_matches_pytorch(model, bnn, x, "resnet8/cbcn widen with thresholds")


def test_widened_student_trains_with_kd_discriminators_and_center_loss():
    """RBCN's discriminators compare the student's K-wide maps after the max over orientations with
    the teacher's. Mutation caught: AdversarialFeatures reading the student taps unpooled (shape error)."""
    from test_paper_wiring import _fixed_loader, _quiet

    teacher = resnet8()
    student = widen(teacher, 2)
    _, history = binarize.finetune(student, teacher, _fixed_loader(), None,
                                   _quiet(epochs=1, steps_per_epoch=2, gan_weight=0.01))
    row = history.epochs[0]
    assert row["train_gan"] > 0 and row["train_center"] > 0


def test_module_called_on_wide_and_plain_maps_is_refused_by_name():
    """Mutation caught: the check in widen_orientations switched off (the BatchNorm then gets a map of
    the wrong width at run time, with an error that names no module)."""
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.body = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.bn(self.stem(x))
            x = self.bn(self.body(x))
            return self.fc(x.mean((2, 3)))

    with pytest.raises(ValueError, match="module 'bn' is called on K-wide and on plain"):
        widen(Shared(), double_skip=False, keep_costly_float=False)


def test_resnet18_widened_costs_what_summary_says():
    """ResNet-18 (downsample branches, the stem's max-pool): K^2 too."""
    model = torchvision.models.resnet18(num_classes=10).eval()
    size = (1, 3, 64, 64)
    xnor = binarize.summary(binarize.convert(model, "xnor", double_skip=True), size)
    wide = binarize.summary(widen(model, 4), size)
    assert wide.binary_macs == 16 * xnor.binary_macs
