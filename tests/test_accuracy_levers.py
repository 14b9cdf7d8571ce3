"""The accuracy levers of the default recipe: RSign thresholds, RPReLU, the two-step schedule for every
method, the method-resolved GAN default, and the config versions that keep older data meaning what it
meant. Each is checked against an independent formula (a PyTorch float computation) or ONNX Runtime."""
import dataclasses
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
from binarize import checkpoint as ckpt
from binarize.datasets import make_loaders
from binarize.finetune import FinetuneConfig, finetune
from binarize.finetune.config import VERSION_2_DEFAULTS, method_defaults
from binarize.layers import BinaryLayer, RPReLU
from binarize.methods import get_method
from binarize.models import resnet_small
from binarize.quantizers import binary_sign
from binarize.tags import tag_of


def lenet():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def randomize(model):
    """Non-trivial thresholds, RPReLU parameters and BatchNorm statistics (they start as identities)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BinaryLayer) and module.input_threshold is not None:
                module.input_threshold.normal_(0, 0.3)
                module.input_threshold[0] = 1.5  # beyond the Hardtanh's range: its Clip must stay
            if isinstance(module, RPReLU):
                module.shift_in.normal_(0, 0.3)
                module.shift_out.normal_(0, 0.3)
                module.slope.uniform_(-0.5, 1.5)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


# ------------------------------------------------------------------------------------------- RSign

@pytest.mark.parametrize("method", ["xnor", "bireal", "rbcn", "cbcn", "biper"])
def test_rsign_binarizes_input_minus_its_per_channel_threshold(method):
    """Mutation caught: binarize_input ignoring the threshold (or adding it)."""
    spec = get_method(method)
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    layer = spec.conv(conv, spec.config(input_threshold=True))
    assert isinstance(layer.input_threshold, nn.Parameter) and layer.input_threshold.shape == (6,)
    assert torch.equal(layer.input_threshold, torch.zeros(6))  # starts as sign(x)
    with torch.no_grad():
        layer.input_threshold.copy_(torch.linspace(-0.5, 0.5, 6))
    x = torch.randn(2, 6, 5, 5)
    expected = binary_sign(x - torch.linspace(-0.5, 0.5, 6).view(1, 6, 1, 1))
    assert torch.equal(layer.binarize_input(x), expected)
    # the threshold learns: its gradient is minus the sum of the estimator's gradient over its channel
    layer.binarize_input(x).sum().backward()
    assert layer.input_threshold.grad is not None and layer.input_threshold.grad.abs().sum() > 0


def test_rsign_off_leaves_no_parameter_and_linear_layers_get_one_per_feature():
    spec = get_method("xnor")
    layer = spec.conv(nn.Conv2d(3, 4, 3), spec.config(input_threshold=False))
    assert layer.input_threshold is None and "input_threshold" not in dict(layer.named_parameters())
    linear = spec.linear(nn.Linear(7, 2), spec.config())
    assert linear.input_threshold.shape == (7,)
    x = torch.randn(3, 7)
    with torch.no_grad():
        linear.input_threshold.fill_(0.2)
    assert torch.allclose(linear(x), F.linear(binary_sign(x - 0.2), linear.binarized_weight(), linear.bias))
    with pytest.raises(TypeError, match="Parameter or None expected"):
        linear.input_threshold = torch.zeros(7)


def test_rsign_threshold_follows_the_model_to_another_dtype_and_into_the_state_dict():
    bnn = binarize.convert(lenet(), "bireal")
    layer = next(m for m in bnn.modules() if isinstance(m, BinaryLayer))
    assert any(name.endswith("input_threshold") for name in bnn.state_dict())
    bnn.double()
    assert layer.input_threshold.dtype == torch.float64


# ------------------------------------------------------------------------------------------ RPReLU

def test_rprelu_matches_its_formula_and_starts_as_the_identity():
    """y = PReLU(x - shift_in) + shift_out per channel. Mutation caught: the shift added inside
    instead of subtracted."""
    module = RPReLU(4)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(module(x), x)
    with torch.no_grad():
        module.shift_in.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        module.slope.copy_(torch.tensor([0.25, 0.5, -1.0, 2.0]))
        module.shift_out.copy_(torch.tensor([1.0, 0.0, -1.0, 0.5]))
    shifted = x - module.shift_in.view(1, 4, 1, 1)
    expected = torch.where(shifted >= 0, shifted, module.slope.view(1, 4, 1, 1) * shifted) + module.shift_out.view(1, 4, 1, 1)
    assert torch.allclose(module(x), expected)


def test_rprelu_sits_after_each_binary_layers_batchnorm_before_the_double_skip():
    model = resnet_small(blocks=(1, 1, 1)).eval()
    bnn = binarize.convert(model, "bireal", rprelu=True)
    plain = binarize.convert(model, "bireal", rprelu=False, input_threshold=False)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(bnn.eval()(x), plain.eval()(x), atol=1e-6)  # identities at first
    rprelus = [n for n in bnn.graph.nodes if tag_of(n) is not None and tag_of(n).role == "rprelu"]
    binary = [n for n in bnn.graph.nodes if tag_of(n) is not None and tag_of(n).role == "binary_layer"]
    assert len(rprelus) == len(binary) == 6
    for node in rprelus:
        assert node.args[0].target == tag_of(next(b for b in binary if b.target.replace(".", "_") + "_rprelu"
                                                  == node.target)).batchnorm
        assert any(tag_of(user) is not None and tag_of(user).role == "double_skip_add" for user in node.users)


# ------------------------------------------------------------------------------------------ export

@pytest.mark.parametrize("method", ["xnor", "bireal", "biper", "cbcn", "rbcn"])
def test_export_with_thresholds_and_rprelu_matches_pytorch(tmp_path, method):
    """The thresholds export as the binary op's threshold input, RPReLU as Sub/PRelu/Add."""
    import onnx

    torch.manual_seed(0)
    bnn = binarize.convert(resnet_small(blocks=(1, 1, 1)), method, rprelu=True)
    if method == "biper":
        binarize.set_stage(bnn, 2)
    randomize(bnn)
    x = torch.randn(8, 1, 28, 28)
    path = binarize.export(bnn, tmp_path / "m.onnx", x)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("PRelu") == 6
    session = binarize.runtime.session(path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = bnn(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_export_without_the_new_parts_has_no_new_nodes(tmp_path):
    import onnx

    torch.manual_seed(0)
    bnn = binarize.convert(resnet_small(blocks=(1, 1, 1)), "xnor", input_threshold=False, rprelu=False).eval()
    ops = [n.op_type for n in onnx.load(str(binarize.export(bnn, tmp_path / "m.onnx", torch.randn(2, 1, 28, 28)))).graph.node]
    assert "PRelu" not in ops and not any("input_shift" in n.name for n in onnx.load(str(tmp_path / "m.onnx")).graph.node)


def test_export_refuses_a_layer_in_the_real_weight_stage(tmp_path):
    bnn = binarize.convert(resnet_small(blocks=(1, 1, 1)), "xnor")
    next(m for m in bnn.modules() if isinstance(m, BinaryLayer)).real_weights = True
    with pytest.raises(ValueError, match="stage 1 of the two-step schedule"):
        binarize.export(bnn, tmp_path / "m.onnx", torch.randn(2, 1, 28, 28))


# ------------------------------------------------------------------------------- two-step schedule

@pytest.mark.parametrize("method", ["xnor", "bireal", "cbcn", "rbcn"])
def test_stage_1_uses_the_real_weights_through_the_methods_own_scaling(method):
    """Stage 1: the weight estimator is the identity, so the layer convolves sign(x) with the method's
    scaled real weights (XNOR: alpha * w). Mutation caught: weight_estimator ignoring real_weights."""
    spec = get_method(method)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    layer = spec.conv(conv, spec.config(input_threshold=False))
    x = torch.randn(2, 4, 6, 6)
    binary = layer(x)
    layer.real_weights = True
    real = layer(x)
    assert not torch.allclose(real, binary)
    if method in ("xnor", "bireal"):
        alpha = conv.weight.abs().mean(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        assert torch.allclose(real, F.conv2d(binary_sign(x), alpha * conv.weight, conv.bias, padding=1), atol=1e-6)
    layer.real_weights = False
    assert torch.equal(layer(x), binary)


def test_two_step_phases_for_every_one_stage_method_and_none_for_float():
    bnn = binarize.convert(lenet(), "xnor")
    policy = get_method("xnor")
    phases = policy.training_phases(bnn, FinetuneConfig(epochs=3, lr=0.01, stage1_lr=0.1, two_step=True))
    assert [(p.name, p.epochs, p.lr, p.stage) for p in phases] == [("stage 1", 3, 0.1, 1), ("stage 2", 3, 0.01, 2)]
    two_step = dict(two_step=True, epochs=5)
    assert [p.epochs for p in policy.training_phases(bnn, FinetuneConfig(stage1_epochs=2, **two_step))] == [2, 5]
    assert [p.stage for p in policy.training_phases(bnn, FinetuneConfig(stage1_epochs=0, **two_step))] == [2]
    assert [p.stage for p in policy.training_phases(bnn, FinetuneConfig(epochs=5))] == [None]  # the default
    float_policy = binarize.methods.training_policy(lenet())
    assert [p.epochs for p in float_policy.training_phases(lenet(), FinetuneConfig(epochs=4, two_step=True))] == [4]
    with pytest.raises(ValueError, match="stage1_epochs=1 needs a binary student and two_step=True"):
        policy.training_phases(bnn, FinetuneConfig(stage1_epochs=1, two_step=False))


def test_finetune_trains_real_weights_first_then_binary(one_thread):
    """The trainer runs stage 1 with real_weights set on every layer and ends in stage 2 (binary)."""
    torch.manual_seed(0)
    teacher = lenet()
    bnn = binarize.convert(teacher, "bireal")
    seen = []
    layers = [m for m in bnn.modules() if isinstance(m, BinaryLayer)]
    layers[0].register_forward_pre_hook(lambda module, args: seen.append(module.real_weights) if module.training else None)
    train, val, _ = make_loaders("mnist5k", batch_size=16, image_size=16)
    student, history = finetune(bnn, teacher, train, val, FinetuneConfig(epochs=1, two_step=True, steps_per_epoch=2,
                                                                         progress=False, evaluate_initial=False))
    assert [row["phase"] for row in history.epochs] == ["stage 1", "stage 2"]
    assert seen[:2] == [True, True] and seen[-1] is False
    assert not any(m.real_weights for m in layers)


# ----------------------------------------------------------------------------- defaults, versions

def test_gan_weight_is_the_methods_default_when_left_at_none():
    config = FinetuneConfig()
    assert config.gan_weight is None
    assert method_defaults(config, get_method("rbcn"))["gan_weight"] == 0.01
    for method in ("xnor", "bireal", "biper", "cbcn"):
        assert method_defaults(config, get_method(method))["gan_weight"] == 0.0
    assert method_defaults(FinetuneConfig(gan_weight=0.2), get_method("bireal"))["gan_weight"] == 0.2


def test_learning_rate_left_at_none_is_the_methods_and_version_3_data_keeps_its_own():
    """Version 4: ``lr=None`` resolves per method in the phases the trainer runs (a method's
    ``finetune_defaults`` lr, else 1e-2: every built-in method's binary stage, BiPer's stage 2 too);
    version-3 data reads back at 2e-3 without warm-up. Mutations caught: the method's lr not read;
    the version-3 upgrade an identity."""
    config = FinetuneConfig(epochs=2)
    assert (config.lr, config.stage1_lr, config.warmup_epochs) == (None, 1e-2, 0.5)
    xnor, biper = binarize.convert(lenet(), "xnor"), binarize.convert(lenet(), "biper")
    assert [(p.name, p.lr) for p in get_method("xnor").training_phases(xnor, config)] == [("train", 1e-2)]
    assert [(p.name, p.lr) for p in get_method("biper").training_phases(biper, config)] == [
        ("stage 1", 1e-2), ("stage 2", 1e-2)]
    assert [p.lr for p in get_method("biper").training_phases(biper, FinetuneConfig(lr=0.05))] == [1e-2, 0.05]
    own = types.SimpleNamespace(finetune_defaults={"lr": 3e-3})  # a method with a rate of its own
    assert method_defaults(config, own)["lr"] == 3e-3
    assert method_defaults(FinetuneConfig(lr=0.05), own)["lr"] == 0.05
    old = FinetuneConfig.from_data({"version": 3, "epochs": 5})
    assert (old.lr, old.stage1_lr, old.warmup_epochs, old.epochs) == (2e-3, 2e-3, 0.0, 5)


def test_finetune_config_version_2_data_keeps_its_recipe():
    """Version 2 data written without the fields whose defaults version 3 changed (a hand-written
    recipe) reads as version 2 meant them: SGD at 0.01, weight decay, the GAN on, one binary stage.
    Mutation caught: an upgrade that only adds two_step."""
    data = {"version": 2, "epochs": 5, "kd_weight": 0.5}
    config = FinetuneConfig.from_data(data)
    assert (config.optimizer, config.lr, config.stage1_lr, config.weight_decay, config.gan_weight, config.two_step) == \
        ("sgd", 0.01, 0.1, 1e-4, 0.01, False)
    assert (config.epochs, config.kd_weight) == (5, 0.5)
    assert all(getattr(config, k) == v for k, v in VERSION_2_DEFAULTS.items())
    full = dataclasses.replace(FinetuneConfig(), optimizer="sgd").to_data()  # every field stored: kept as written
    full = {k: v for k, v in full.items() if k != "two_step"}
    assert FinetuneConfig.from_data(dict(full, version=2)) == dataclasses.replace(FinetuneConfig(), optimizer="sgd",
                                                                                  two_step=False)
    assert FinetuneConfig.from_data(FinetuneConfig().to_data()) == FinetuneConfig()


def test_convert_config_version_2_data_builds_no_thresholds_or_rprelu():
    config = binarize.methods.get_method("bireal").config()
    data = ckpt.config_to_data(config)
    assert data["options"]["version"] == 6
    version_2 = {k: v for k, v in data["options"].items() if k not in ("input_threshold", "rprelu")}
    rebuilt = ckpt.config_from_data({"method": "bireal", "options": dict(version_2, version=2)})
    assert (rebuilt.input_threshold, rebuilt.rprelu) == (False, False)
    assert dataclasses.replace(rebuilt, input_threshold=config.input_threshold, rprelu=config.rprelu) == config


def test_a_linear_layers_threshold_is_on_its_feature_axis_and_exports(tmp_path):
    """A binary Linear reading (N, tokens, features) shifts each feature (the last axis), as its
    packing does. Mutation caught: the threshold broadcast over dim 1 for Linear layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    # tiny layers: the cost rule (keep_costly_float) would keep them float
    bnn = binarize.convert(model, "xnor", binarize_linear=True, keep_costly_float=False).eval()
    layer = next(m for m in bnn.modules() if isinstance(m, BinaryLayer) and m.in_features == 5)
    with torch.no_grad():
        layer.input_threshold.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0, -0.4]))
    hidden = torch.randn(2, 7, 5)
    assert torch.equal(layer.binarize_input(hidden), binary_sign(hidden - layer.input_threshold))
    x = torch.randn(2, 7, 6)
    session = binarize.runtime.session(binarize.export(bnn, tmp_path / "m.onnx", x))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = bnn(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_zero_thresholds_export_no_sub(tmp_path):
    """A fresh conversion (thresholds at 0) exports the graph version 2 exported: x - 0 is x."""
    import onnx

    bnn = binarize.convert(resnet_small(blocks=(1, 1, 1)), "xnor", rprelu=False).eval()
    ops = [n.op_type for n in onnx.load(str(binarize.export(bnn, tmp_path / "m.onnx", torch.randn(2, 1, 28, 28)))).graph.node]
    plain = binarize.convert(resnet_small(blocks=(1, 1, 1)), "xnor", rprelu=False, input_threshold=False).eval()
    assert ops == [n.op_type for n in onnx.load(str(binarize.export(plain, tmp_path / "p.onnx",
                                                                     torch.randn(2, 1, 28, 28)))).graph.node]


# ------------------------------------------------------------------------------------ latent gain

def _gain_pair(method, **overrides):
    """The same float LeNet converted with latent_gain=8 (every method's default but xnor's) and 1."""
    torch.manual_seed(0)
    model = lenet()
    return (binarize.convert(model, method, latent_gain=8.0, **overrides),
            binarize.convert(model, method, latent_gain=1.0, **overrides))


@pytest.mark.parametrize("method", ["xnor", "bireal", "biper", "cbcn", "rbcn"])
def test_latent_gain_stores_weights_divided_and_computes_the_same_model(method):
    """The stored weight is the float one over 8 (a power of two: times 8 it is the float weight bit for
    bit), so the converted model computes what latent_gain=1 computes, and exports the same signs and
    multipliers."""
    gained, plain = _gain_pair(method)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(gained.eval()(x), plain.eval()(x))
    if method == "biper":  # converted in stage 1 (real-valued sin(omega w)); stage 2 re-fits the scales
        for model in (gained, plain):
            binarize.set_stage(model, 2)
        with torch.no_grad():
            assert torch.equal(gained(x), plain(x))
    for (_, g), (_, p) in zip(binarize.binary_layers(gained), binarize.binary_layers(plain)):
        assert torch.equal(g.weight * 8, p.weight) and torch.equal(g.latent_weight, p.latent_weight)
        for a, b in zip(g.export_weight(), p.export_weight()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer", [lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                                       lambda ps: torch.optim.Adam(ps, lr=1e-3)], ids=["sgd", "adam"])
def test_a_users_optimizer_moves_latent_weights_gain_times_further_and_float_weights_alike(optimizer):
    """The gain's gradient passes through unscaled: ``weight.grad`` is dL/d(latent weight), and one
    step of SGD or Adam changes the latent weight 8 times as much as with latent_gain=1, while the
    float layers take the same step. Mutation caught: the backward scaling the gradient by the gain
    (SGD's step is then 64x)."""
    gained, plain = _gain_pair("xnor")
    x, labels = torch.randn(8, 1, 28, 28), torch.arange(8)
    latent = {}
    for model in (gained, plain):
        before = [l.latent_weight.detach().clone() for _, l in binarize.binary_layers(model)]
        opt = optimizer(model.parameters())
        opt.zero_grad()
        F.cross_entropy(model.train()(x), labels).backward()
        opt.step()
        latent[model] = [l.latent_weight.detach() - b for (_, l), b in zip(binarize.binary_layers(model), before)]
    for g, p in zip(latent[gained], latent[plain]):
        assert p.abs().max() > 0
        assert torch.allclose(g, 8 * p, rtol=1e-4, atol=1e-7)
    assert torch.allclose(gained.get_submodule("0").weight, plain.get_submodule("0").weight, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method, recipe", [("xnor", dict(optimizer="adam", lr=2e-3, weight_decay=1e-4)),
                                            ("xnor", dict(optimizer="sgd", lr=0.05, weight_decay=1e-4, two_step=True)),
                                            ("biper", dict(stage1_epochs=1))],
                         ids=["adam", "sgd-two-step", "biper-defaults"])
def test_finetune_trains_a_gained_student_exactly_as_latent_gain_1(method, recipe, tmp_path, one_thread):
    """binarize.finetune gives the stored weights lr / gain and weight decay * gain: the measured
    recipes train bit for bit as with latent_gain=1 (the gain is a power of two). Mutations caught:
    the group at the phase's lr; weight decay not multiplied."""
    results = []
    for model in _gain_pair(method):
        train, val, _ = make_loaders("mnist5k", batch_size=32, test_batch_size=500)  # the same batches
        torch.manual_seed(0)
        config = FinetuneConfig(epochs=1, steps_per_epoch=6, gan_weight=0.0, progress=False, evaluate_initial=False,
                                run_dir=str(tmp_path / str(len(results))), **recipe)
        trained, _ = finetune(model, lenet(), train, val, config)
        results.append([l.latent_weight.detach() for _, l in binarize.binary_layers(trained)])
    for g, p in zip(*results):
        assert torch.equal(g, p)


def test_convert_config_version_4_data_has_no_latent_gain():
    """Students saved before the gain existed stored the latent weights themselves: their recipe
    rebuilds latent_gain=1, so the saved state_dict means what it meant."""
    assert [get_method(m).config().latent_gain for m in ("xnor", "bireal", "biper", "cbcn", "rbcn")] == [1, 8, 8, 8, 8]
    data = ckpt.config_to_data(get_method("bireal").config())
    assert data["options"]["latent_gain"] == 8.0
    old = {k: v for k, v in data["options"].items() if k != "latent_gain"}
    assert ckpt.config_from_data({"method": "bireal", "options": dict(old, version=4)}).latent_gain == 1.0
    with pytest.raises(ValueError, match="latent_gain"):
        binarize.convert(lenet(), "xnor", latent_gain=0)
