"""binarize.convert and its graph passes on torchvision models and users' own models."""
import copy
import operator

import pytest
import torch
import torchvision
from torch import nn

import binarize
from binarize import passes
from binarize.layers import BinaryLayer
from binarize.methods import METHODS
from binarize.quantizers import binary_sign

METHOD_NAMES = sorted(METHODS)
# tiny layers: the cost rule (keep_costly_float) would keep them float, so the tests of other behaviour on
# PlainNet, InplaceStatementNet, UserNet and resnet18's stem pass keep_costly_float=False.


def conv_names(model, keep):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and keep(n, m)]


def shortcut_is_free(conv: nn.Conv2d) -> bool:
    """A 1x1 conv whose channel counts divide gets a parameter-free shortcut; other shape-changing 1x1
    convs would need a float 1x1 shortcut as costly as themselves and stay float (double-skip methods)."""
    return (tuple(conv.kernel_size) != (1, 1) or conv.in_channels % conv.out_channels == 0
            or conv.out_channels % conv.in_channels == 0)


def binary_is_faster(conv: nn.Conv2d, double_skip: bool) -> bool:
    """From the measured crossover (benchmarks/RESULTS.md, "Where binary pays": AVX2 kernel against ORT
    float): a 1x1 conv of at most 32 input channels is slower binary than float, and with double skips
    so is a narrowing one of at most 96, whose grouped-mean shortcut (ORT's ReduceMean) costs about a
    third of what those 96 channels cost in float."""
    if tuple(conv.kernel_size) != (1, 1):
        return True
    narrowing = conv.out_channels < conv.in_channels
    return conv.in_channels > (96 if double_skip and narrowing else 32)


# Expected binary layers, derived from each architecture independently of the pass's rules.
ARCHITECTURES = {
    "resnet18": lambda m: conv_names(m, lambda n, c: n.startswith("layer") and "downsample" not in n),
    "resnet50": lambda m: conv_names(m, lambda n, c: n.startswith("layer") and "downsample" not in n),
    "vgg11_bn": lambda m: conv_names(m, lambda n, c: n != "features.0"),
    "mobilenet_v2": lambda m: conv_names(m, lambda n, c: n != "features.0.0" and c.groups == 1),
    "densenet121": lambda m: conv_names(m, lambda n, c: n != "features.conv0"),
}


@pytest.fixture(scope="module")
def torchvision_models():
    torch.manual_seed(0)
    return {name: getattr(torchvision.models, name)() for name in ARCHITECTURES}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_torchvision_models_convert_train_and_replace_exactly_the_expected_layers(
        torchvision_models, arch, method):
    model = torchvision_models[arch]
    bnn = binarize.convert(model, method)
    modules = dict(model.named_modules())
    double_skip = bnn.binarize_config.double_skip
    expected = [name for name in ARCHITECTURES[arch](model) if binary_is_faster(modules[name], double_skip)]
    if bnn.binarize_config.double_skip:
        expected = [name for name in expected if shortcut_is_free(modules[name])]
    assert bnn.binarize_plan.binary == expected
    replaced = [n for n, m in bnn.named_modules() if isinstance(m, BinaryLayer)]
    assert sorted(replaced) == sorted(expected)
    assert all(isinstance(m, METHODS[method].conv) for n, m in bnn.named_modules() if n in expected)
    bnn.train()
    x = torch.randn(2, 3, 32, 32)
    out = bnn(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [m.weight.grad for _, m in bnn.named_modules() if isinstance(m, BinaryLayer)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) >= len(grads) * 0.9


def test_resnet18_double_skips_reuse_downsample_and_add_no_parameters(torchvision_models):
    model = torchvision_models["resnet18"]
    # bireal adds no parameter of its own; RSign and RPReLU add one per input and three per output channel
    bnn = binarize.convert(model, "bireal", input_threshold=False, rprelu=False)
    count = lambda m: sum(p.numel() for p in m.parameters())
    hardtanh = sum(isinstance(m, nn.Hardtanh) for m in bnn.modules())
    assert count(bnn) == count(model) and hardtanh == 16
    full = binarize.convert(model, "bireal", rprelu=True)
    binary = [m for _, m in binarize.binary_layers(full)]
    assert count(full) - count(model) == sum(m.in_channels + 3 * m.out_channels for m in binary)
    adds = lambda g: sum(n.op == "call_function" and n.target is operator.add for n in g.graph.nodes)
    assert adds(bnn) == adds(torch.fx.symbolic_trace(model)) + 16
    no_skip = binarize.convert(model, "bireal", double_skip=False)
    assert adds(no_skip) == adds(torch.fx.symbolic_trace(model))
    # the stem's ReLU moves behind its max-pool (they commute) instead of the pool being cloned
    assert sum(n.op == "call_module" and n.target == "maxpool" for n in bnn.graph.nodes) == 1


class PlainNet(nn.Module):
    """No shortcuts, a channel-doubling strided conv, ReLU -> MaxPool -> conv, F.relu."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        a0 = torch.relu(self.bn0(self.conv0(x)))
        a1 = nn.functional.relu(self.bn1(self.conv1(a0)))
        a2 = self.pool(nn.functional.relu(self.bn2(self.conv2(a1))))
        a3 = self.conv3(a2).relu()
        return self.fc(a3.mean((2, 3)))


def test_plain_net_structure_matches_bireal_double_skip_by_hand():
    torch.manual_seed(0)
    model = PlainNet().eval()
    bnn = binarize.convert(model, "xnor", double_skip=True, keep_costly_float=False).eval()
    assert bnn.binarize_plan.binary == ["conv1", "conv2", "conv3"]
    assert isinstance(bnn.conv2_skip[0], nn.AvgPool2d) and bnn.conv2_skip[2].weight.abs().sum() == 0
    with torch.no_grad():
        bnn.conv2_skip[2].weight.fill_(0.5)  # make the new branch matter
        x = torch.randn(3, 3, 17, 15)
        ht = nn.functional.hardtanh
        z0 = bnn.bn0(bnn.conv0(x))
        out1 = bnn.bn1(bnn.conv1(ht(z0))) + torch.relu(z0)
        out2 = bnn.bn2(bnn.conv2(ht(out1))) + bnn.conv2_skip(torch.relu(out1))
        a2 = bnn.pool(torch.relu(out2))
        z3 = bnn.conv3(bnn.pool(ht(out2))) + a2
        expected = bnn.fc(z3.relu().mean((2, 3)))
        assert torch.allclose(bnn(x), expected, atol=1e-5)


class InplaceStatementNet(nn.Module):
    """A ReLU applied in place as a statement (its result unused), read by a binary conv and by a float
    residual addition; ``form`` picks how the statement is written."""

    def __init__(self, form: str):
        super().__init__()
        self.form = form
        self.conv0, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        z = self.bn0(self.conv0(x))
        if self.form == "method":
            z.relu_()
        elif self.form == "functional":
            nn.functional.relu(z, inplace=True)
        elif self.form == "positional":
            nn.functional.relu(z, True)
        else:
            self.act(z)
        return self.fc((self.conv1(z) + z).mean((2, 3)))


@pytest.mark.parametrize("form", ["method", "functional", "positional", "module"])
def test_inplace_relu_statement_still_rectifies_for_the_float_consumers(form):
    torch.manual_seed(0)
    model = InplaceStatementNet(form).eval()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        z = model.bn0(model.conv0(x))
        assert torch.equal(model(x), model.fc((model.conv1(z.relu()) + z.relu()).mean((2, 3))))
        bnn = binarize.convert(model, "xnor", double_skip=False, keep_costly_float=False).eval()
        assert bnn.binarize_plan.binary == ["conv1"]
        # the binary conv reads hardtanh(z) in place of relu(z); the residual keeps relu(z)
        expected = bnn.fc((bnn.conv1(nn.functional.hardtanh(z)) + z.relu()).mean((2, 3)))
        assert torch.allclose(bnn(x), expected, atol=1e-6)


@pytest.mark.parametrize("activation", ["hardtanh", "prelu", "identity"])
def test_binary_layers_see_both_signs(torchvision_models, activation):
    bnn = binarize.convert(torchvision_models["resnet18"], "xnor", activation=activation).eval()
    fractions = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: fractions.append(
        float((binary_sign(inp[0]) < 0).float().mean())))
        for m in bnn.modules() if isinstance(m, BinaryLayer)]
    bnn(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    # layer1.0.conv1 reads the stem's max-pool: a max over 9 values is rarely negative, whatever
    # the activation (a documented limitation); every other binary layer sees both signs
    assert len(fractions) == 16 and fractions[0] > 0 and min(fractions[1:]) > 0.05
    # the float network's own ReLUs are still there for the float consumers
    assert any(isinstance(m, nn.ReLU) for m in bnn.modules())


def test_without_rewrite_a_relu_input_would_be_constant(torchvision_models):
    """The failure the rewrite exists for: sign(ReLU(x)) is +1 everywhere."""
    model = torchvision_models["resnet18"].eval()
    seen = []
    h = model.layer1[0].conv2.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    model(torch.randn(1, 3, 64, 64))
    h.remove()
    assert (binary_sign(seen[0]) > 0).all()


def test_options_first_last_linear_exclude(torchvision_models):
    model = torchvision_models["resnet18"]
    plan = binarize.convert(model, "xnor", keep_first=False, keep_costly_float=False).binarize_plan
    assert plan.binary[0] == "conv1"
    plan = binarize.convert(model, "xnor", binarize_linear=True, keep_last=False).binarize_plan
    assert plan.binary[-1] == "fc"
    plan = binarize.convert(model, "xnor", keep_downsample=False).binarize_plan
    assert "layer2.0.downsample.0" in plan.binary
    plan = binarize.convert(model, "xnor", exclude=["layer1.0.conv1", "re:layer4\\..*"]).binarize_plan
    assert "layer1.0.conv1" not in plan.binary and not any(n.startswith("layer4") for n in plan.binary)
    assert plan.kept_float["layer4.1.conv2"] == "excluded by name (exclude)"
    vgg = torchvision_models["vgg11_bn"]
    plan = binarize.convert(vgg, "xnor", binarize_linear=True).binarize_plan
    assert plan.binary[-2:] == ["classifier.0", "classifier.3"] and "classifier.6" in plan.kept_float
    plan = binarize.convert(PlainNet(), "xnor", exclude_types=(nn.Conv2d,), binarize_linear=True,
                            keep_last=False, keep_costly_float=False).binarize_plan
    assert plan.binary == ["fc"]


def test_bad_options_give_clear_errors(torchvision_models):
    model = torchvision_models["resnet18"]
    with pytest.raises(TypeError, match="omga"):
        binarize.convert(model, "biper", omga=3)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        binarize.convert(model, "nope")
    with pytest.raises(ValueError, match="exclude: no module named"):
        binarize.convert(model, "xnor", exclude=["layer9.conv"])
    with pytest.raises(ValueError, match="activation="):
        binarize.convert(model, "xnor", activation="relu")
    with pytest.raises(ValueError, match="no layer"):
        binarize.convert(nn.Sequential(nn.Conv2d(3, 3, 3)), "xnor")


def test_config_object_and_overrides(torchvision_models):
    bnn = binarize.convert(torchvision_models["resnet18"], binarize.BiPerConfig(omega=10.0), stage=2)
    layer = bnn.get_submodule("layer1.0.conv1")
    assert float(layer.omega) == 10.0 and int(layer.stage) == 2
    assert "method=biper" in str(bnn)


class Gate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # data-dependent control flow: not traceable


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.gate = Gate()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.gate(self.body(self.stem(x))).mean((2, 3)))


def test_untraceable_module_is_named_and_leaf_option_works():
    with pytest.raises(binarize.TraceError, match=r"(?s)module 'gate' \(Gate\).*leaf_modules=\['gate'\]"):
        binarize.convert(UserNet(), "rbcn")
    bnn = binarize.convert(UserNet(), "rbcn", leaf_modules=["gate"], keep_costly_float=False)
    assert bnn.binarize_plan.binary == ["body.1"]
    bnn(torch.randn(2, 1, 9, 9)).sum().backward()
    by_type = binarize.convert(UserNet(), "rbcn", leaf_modules=[Gate], keep_costly_float=False)
    assert by_type.binarize_plan.binary == ["body.1"]


def test_leaf_with_convolutions_warns():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = UserNet()
            self.extra = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.inner(x)

    with pytest.warns(UserWarning, match="'inner' is not traced into"):
        with pytest.raises(ValueError, match="no layer"):
            binarize.convert(Wrapped(), "xnor", leaf_modules=["inner"])


def test_caller_model_untouched_unless_inplace(torchvision_models):
    model = torchvision_models["resnet18"]
    before = copy.deepcopy(model.state_dict())
    bnn = binarize.convert(model, "biper")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.layer1[0].conv1, nn.Conv2d) and model.relu.inplace
    assert bnn.get_submodule("layer1.0.conv1").weight.data_ptr() != model.layer1[0].conv1.weight.data_ptr()
    twin = copy.deepcopy(bnn)
    assert twin.binarize_plan.binary == bnn.binarize_plan.binary and twin.binarize_config == bnn.binarize_config
    own = copy.deepcopy(model)
    bnn2 = binarize.convert(own, "biper", inplace=True)
    assert bnn2.get_submodule("bn1") is own.bn1


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_state_dict_round_trip_and_any_optimizer(torchvision_models, method):
    model = torchvision_models["resnet18"]
    bnn = binarize.convert(model, method)
    x = torch.randn(2, 3, 40, 56)
    for opt_cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        opt = opt_cls(bnn.parameters(), lr=1e-3)
        before = bnn.get_submodule("layer2.0.conv1").weight.detach().clone()
        loss = bnn(x).logsumexp(1).mean() + sum(binarize.extra_losses(bnn).values(), torch.tensor(0.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert not torch.equal(before, bnn.get_submodule("layer2.0.conv1").weight)
    fresh = binarize.convert(model, method)
    fresh.load_state_dict(bnn.state_dict())
    bnn.eval(), fresh.eval()
    assert torch.equal(bnn(x), fresh(x))
    assert bnn(torch.randn(1, 3, 33, 47)).shape == (1, 1000)


def test_extra_losses_and_set_stage(torchvision_models):
    model = torchvision_models["resnet18"]
    assert set(binarize.extra_losses(binarize.convert(model, "rbcn"))) == {"rbcn_kernel"}
    assert binarize.extra_losses(binarize.convert(model, "xnor")) == {}
    bnn = binarize.convert(model, "biper")
    binarize.set_stage(bnn, 2)
    assert all(int(m.stage) == 2 for _, m in binarize.binary_layers(bnn))
    with pytest.raises(ValueError, match="only method='biper'"):
        binarize.set_stage(binarize.convert(model, "xnor"), 2)


def test_topological_sort_fixes_forward_references():
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(), nn.Tanh()))
    nodes = list(gm.graph.nodes)
    relu, tanh = nodes[1], nodes[2]
    tanh.args = (nodes[0],)
    relu.args = (tanh,)  # relu now depends on a later node
    passes.topological_sort(gm.graph)
    order = list(gm.graph.nodes)
    assert order.index(tanh) < order.index(relu)


# ------------------------------------------------------------------ shortcuts and the cost rule
def test_parameter_free_shortcut_repeats_or_averages_channels_after_pooling():
    x = torch.randn(2, 4, 5, 7)
    pooled = nn.functional.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    widen = passes.ParameterFreeShortcut((2, 2), 4, 12)
    assert torch.equal(widen(x), torch.stack([pooled[:, c % 4] for c in range(12)], 1))
    narrow = passes.ParameterFreeShortcut((1, 1), 4, 2)
    assert torch.allclose(narrow(x), torch.stack([(x[:, 0] + x[:, 1]) / 2, (x[:, 2] + x[:, 3]) / 2], 1))
    assert not list(widen.parameters())
    with pytest.raises(ValueError, match="4 -> 6 channels"):
        passes.ParameterFreeShortcut((1, 1), 4, 6)


class PointwiseNet(nn.Module):
    """A 3x3 conv that widens 8 -> 16 (no downsample branch) and three 1x1 convs: 16 -> 32 (divides),
    32 -> 24 (does not divide) and 24 -> 24 (same shape)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.wide = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.odd = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.same = nn.Sequential(nn.Conv2d(24, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(self.same(self.odd(self.expand(self.wide(self.stem(x))))).mean((2, 3)))


def _shortcut_modules(bnn):
    return {name: type(module).__name__ for name, module in bnn.named_children() if name.endswith("_skip")}


# PointwiseNet's layers are too narrow for binary to pay (test_cost_rule_*), so these use the
# version-2/3 rule, which charges only a new float conv shortcut.
@pytest.mark.parametrize("options, binary, shortcuts", [
    ({}, ["wide.0", "expand.0", "same.0"],
     {"wide_0_skip": "Sequential", "expand_0_skip": "ParameterFreeShortcut"}),
    ({"shortcut": "free"}, ["wide.0", "expand.0", "same.0"],
     {"wide_0_skip": "ParameterFreeShortcut", "expand_0_skip": "ParameterFreeShortcut"}),
    ({"shortcut": "conv"}, ["wide.0", "same.0"], {"wide_0_skip": "Sequential"}),
    ({"shortcut": "conv", "keep_costly_float": False}, ["wide.0", "expand.0", "odd.0", "same.0"],
     {"wide_0_skip": "Sequential", "expand_0_skip": "Sequential", "odd_0_skip": "Sequential"}),
])
def test_shortcut_kinds_and_the_shortcut_cost_rule(options, binary, shortcuts):
    bnn = binarize.convert(PointwiseNet(), "bireal", cost_model="shortcut", **options)
    assert bnn.binarize_plan.binary == binary
    assert _shortcut_modules(bnn) == shortcuts
    for name in set(["wide.0", "expand.0", "odd.0", "same.0"]) - set(binary):
        assert "binary would not be faster" in bnn.binarize_plan.kept_float[name]
        assert f"shortcut {dict(bnn.named_modules())[name].in_channels}" in bnn.binarize_plan.kept_float[name]
    out = bnn(torch.randn(2, 3, 6, 6))
    assert out.shape == (2, 10)


def one_layer_net(kernel: int, channels: int, out_channels: int) -> nn.Module:
    """Layer "6" (``channels`` -> ``out_channels``) is the one under test; "3", a 3x3 conv from 32
    channels, is always worth binarizing."""
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(out_channels, 10))


# Expectations from the measured crossover (RESULTS.md, "Where binary pays"; AVX2 kernel against ORT
# float at 56x56 and 14x14): float/binary time 1x1 conv, 32 channels 0.61-0.87 and 64 channels 1.42-1.45;
# 3x3 conv, 8 channels 0.68-0.70 and 16 channels 1.28-1.38.
@pytest.mark.parametrize("method", ["xnor", "bireal"])  # without and with (identity) double skips
@pytest.mark.parametrize("kernel, channels, binary", [(1, 32, False), (1, 64, True), (3, 8, False), (3, 16, True)])
def test_cost_rule_keeps_float_the_layers_the_crossover_measured_slower(method, kernel, channels, binary):
    bnn = binarize.convert(one_layer_net(kernel, channels, channels), method)
    assert bnn.binarize_plan.binary == (["3", "6"] if binary else ["3"])
    if not binary:
        assert "binary would not be faster" in bnn.binarize_plan.kept_float["6"]
    # The version-2/3 rule binarizes them all: there is no new float conv shortcut to charge.
    assert binarize.convert(one_layer_net(kernel, channels, channels), method,
                            cost_model="shortcut").binarize_plan.binary == ["3", "6"]


def test_cost_rule_charges_the_parameter_free_shortcut():
    # 1x1, 64 -> 32 channels pays alone (as 64 -> 64) but not with its grouped-mean shortcut.
    assert binarize.convert(one_layer_net(1, 64, 32), "xnor").binarize_plan.binary == ["3", "6"]
    bnn = binarize.convert(one_layer_net(1, 64, 32), "bireal")
    assert bnn.binarize_plan.binary == ["3"] and "shortcut 47" in bnn.binarize_plan.kept_float["6"]
    assert binarize.convert(one_layer_net(1, 128, 64), "bireal").binarize_plan.binary == ["3", "6"]


def test_no_layer_worth_binarizing_is_a_clear_error():
    narrow = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                           nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match="no layer of Sequential is worth binarizing.*keep_costly_float=False"):
        binarize.convert(narrow, "xnor")
    assert binarize.convert(narrow, "xnor", keep_costly_float=False).binarize_plan.binary == ["2"]


def test_cost_model_is_checked():
    with pytest.raises(ValueError, match="cost_model='fast'"):
        binarize.convert(one_layer_net(3, 16, 16), "xnor", cost_model="fast")


def test_methods_without_double_skips_binarize_every_pointwise_conv():
    assert binarize.convert(PointwiseNet(), "xnor", cost_model="shortcut").binarize_plan.binary == [
        "wide.0", "expand.0", "odd.0", "same.0"]


def test_bad_shortcut_option_is_named():
    with pytest.raises(ValueError, match="shortcut='fast'"):
        binarize.convert(PointwiseNet(), "bireal", shortcut="fast")


class SqueezeExcitationNet(nn.Module):
    """A wide 3x3 conv, then a squeeze-excitation gate written with ``mean(keepdim=True)`` (torchvision's
    SqueezeExcitation uses AdaptiveAvgPool2d(1), covered by the MobileNetV3 test)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.fc1, self.fc2 = nn.Conv2d(64, 128, 1), nn.Conv2d(128, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.body(self.stem(x))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.fc((x * gate).mean((2, 3)))


class RowPooledNet(SqueezeExcitationNet):
    """Its 1x1 convs read a map pooled over one axis only (``mean(3, True)``, an int dim): not 1x1."""

    def forward(self, x):
        return self.fc(self.fc2(self.fc1(self.body(self.stem(x)).mean(3, True))).mean((2, 3)))


class PositionalKeepdimNet(SqueezeExcitationNet):
    """A global pooling written ``mean((2, 3), True)``: keepdim given positionally."""

    def forward(self, x):
        return self.fc(self.fc2(self.fc1(self.body(self.stem(x)).mean((2, 3), True))).mean((2, 3)))


def test_cost_rule_keeps_squeeze_excitation_convs_float():
    """A 1x1 conv on a globally pooled map is a fully connected layer: one output value per channel and
    image, so the binary op's per-call cost cannot pay (MobileNetV3-small ran 0.95x float with them binary;
    benchmarks/RESULTS.md). Mutation caught: the check removed from keep_costly_layers_float."""
    bnn = binarize.convert(SqueezeExcitationNet(), "xnor")
    assert bnn.binarize_plan.binary == ["body.0"]
    assert all("globally pooled" in bnn.binarize_plan.kept_float[name] for name in ("fc1", "fc2"))
    # Version-3 data (the shortcut-only rule) binarized them, and still does.
    assert binarize.convert(SqueezeExcitationNet(), "xnor", cost_model="shortcut").binarize_plan.binary == [
        "body.0", "fc1", "fc2"]
    # Other reductions are not global pools: one spatial axis (an int dim) keeps the conv binary; a
    # positional keepdim is read too. Mutation caught: the int dim iterated (TypeError in convert).
    assert binarize.convert(RowPooledNet(), "xnor").binarize_plan.binary == ["body.0", "fc1", "fc2"]
    assert binarize.convert(PositionalKeepdimNet(), "xnor").binarize_plan.binary == ["body.0"]
    model = torchvision.models.mobilenet_v3_small()
    plan = binarize.convert(model, "biper").binarize_plan
    se_convs = [n for n, m in model.named_modules() if isinstance(m, torchvision.ops.SqueezeExcitation)]
    assert se_convs and not [n for n in plan.binary if any(n.startswith(se + ".") for se in se_convs)]
