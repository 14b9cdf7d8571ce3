"""Each method's binary layer against its paper's formulas."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binarize.analysis import auto_omega, optimal_scale
from binarize.methods import get_method
from binarize.methods.cbcn import ring_permutation
from binarize.quantizers import binary_sign


def make_layer(method, conv=None, **overrides):
    torch.manual_seed(0)
    conv = conv or nn.Conv2d(6, 5, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.05)
    spec = get_method(method)
    return conv, spec.conv(conv, spec.config(**overrides))


def test_layer_copies_weights_and_leaves_source_untouched():
    conv, layer = make_layer("xnor")
    assert torch.equal(layer.latent_weight, conv.weight) and layer.weight is not conv.weight
    conv, layer = make_layer("xnor", latent_gain=8.0)  # xnor's default is 1
    assert torch.equal(layer.latent_weight, conv.weight) and torch.equal(layer.weight * 8, conv.weight)
    assert torch.equal(layer.bias, conv.bias)


def test_input_is_zero_padded_after_binarization():
    conv, layer = make_layer("xnor")
    x = torch.randn(2, 6, 7, 9)
    x[0, :, 0, 0] = 0.0  # sign(0) = +1
    expected = F.conv2d(binary_sign(x), layer.binarized_weight(), layer.bias, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_xnor_weight_and_gradient():
    _, layer = make_layer("xnor")
    w, latent = layer.weight, layer.latent_weight.detach()  # w.grad: the gradient w.r.t. the latent weight
    alpha = latent.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(layer.binarized_weight(), alpha * binary_sign(latent))
    upstream = torch.randn_like(w)
    (layer.binarized_weight() * upstream).sum().backward()
    n = w[0].numel()
    inside = (latent.abs() <= 1).to(w.dtype)
    # d(alpha sign(w))/dw: alpha * STE'(w) + sign(w) * d(alpha)/dw, with d(alpha)/dw = sign(w) / n
    expected = upstream * alpha * inside + binary_sign(latent) * (
        upstream * binary_sign(latent)).sum(dim=(1, 2, 3), keepdim=True) / n
    assert torch.allclose(w.grad, expected, atol=1e-6)


def test_bireal_uses_approx_sign_for_activations():
    _, layer = make_layer("bireal")
    x = torch.tensor([-0.5, 0.25, 2.0]).view(1, 3, 1, 1).repeat(1, 2, 1, 1).requires_grad_(True)
    layer.binarize_input(x).sum().backward()
    assert torch.allclose(x.grad.flatten()[:3], torch.tensor([1.0, 1.5, 0.0]))


class TestBiPer:
    def test_scale_is_eq8_of_per_channel_laplace_fit(self):
        _, layer = make_layer("biper")
        b = layer.latent_weight.detach().abs().mean(dim=(1, 2, 3)).double().numpy()
        assert torch.allclose(layer.scale.detach().double(), torch.from_numpy(optimal_scale(b, 20.0)),
                              rtol=1e-6)

    def test_stage1_uses_sine_weights_stage2_binary(self):
        _, layer = make_layer("biper")
        w = layer.latent_weight.detach()
        assert int(layer.stage) == 1
        assert torch.allclose(layer.binarized_weight(), torch.sin(20 * w))
        with pytest.raises(ValueError, match="set_stage"):
            layer.export_weight()
        layer.set_stage(2)
        expected = layer.scale.detach().view(-1, 1, 1, 1) * binary_sign(torch.sin(20 * w))
        assert torch.allclose(layer.binarized_weight(), expected)

    def test_stage2_gradient_is_omega_cos(self):
        _, layer = make_layer("biper", stage=2)
        upstream = torch.randn_like(layer.weight)
        (layer.binarized_weight() * upstream).sum().backward()
        w = layer.latent_weight.detach()
        expected = upstream * layer.scale.detach().view(-1, 1, 1, 1) * 20 * torch.cos(20 * w)
        assert torch.allclose(layer.weight.grad, expected, atol=1e-5)

    def test_switching_stage_refits_scale_from_trained_weights(self):
        _, layer = make_layer("biper")
        with torch.no_grad():
            layer.weight.mul_(2)
        layer.set_stage(2)
        b = layer.latent_weight.detach().abs().mean(dim=(1, 2, 3)).double().numpy()
        assert torch.allclose(layer.scale.detach().double(), torch.from_numpy(optimal_scale(b, 20.0)))

    def test_auto_omega_follows_the_layer_spread(self):
        _, layer = make_layer("biper", omega="auto")
        b = float(layer.latent_weight.detach().abs().mean())
        assert math.isclose(float(layer.omega), auto_omega(b), rel_tol=1e-6)


class TestCBCN:
    def test_ring_shift_on_hand_made_filter(self):
        w = torch.arange(9.0)
        # one 45-degree step counter-clockwise: the outer ring moves, the centre stays
        assert w[ring_permutation(1)].view(3, 3).tolist() == [[1, 2, 5], [0, 4, 8], [3, 6, 7]]
        assert torch.equal(w[ring_permutation(2)].view(3, 3), torch.rot90(w.view(3, 3), 1))
        assert torch.equal(w[ring_permutation(8)], w)

    @pytest.mark.parametrize("k", [1, 2, 4, 8])
    def test_filters_are_the_k_orientations(self, k):
        _, layer = make_layer("cbcn", orientations=k)
        g = layer.circulant_filters().detach()
        cout = layer.out_channels
        assert g.shape == (k * cout, 6, 3, 3)
        for j in range(k):
            expected = layer.latent_weight.detach().flatten(2)[:, :, ring_permutation(j * 8 // k)].view_as(layer.weight)
            assert torch.equal(g[j * cout:(j + 1) * cout], expected)

    def test_rot90_path_for_5x5_kernels_and_errors(self):
        _, layer = make_layer("cbcn", conv=nn.Conv2d(2, 3, 5, padding=2), orientations=4)
        g = layer.circulant_filters().detach()
        assert torch.equal(g[3:6], torch.rot90(layer.latent_weight.detach(), 1, dims=(2, 3)))
        with pytest.raises(ValueError, match="3x3"):
            make_layer("cbcn", conv=nn.Conv2d(2, 3, 5, padding=2), orientations=8)
        with pytest.raises(ValueError, match="square"):
            make_layer("cbcn", conv=nn.Conv2d(2, 3, (1, 3)), orientations=4)

    def test_circulant_back_propagation_is_eq8(self):
        _, layer = make_layer("cbcn", orientations=8)
        upstream = torch.randn(8 * 5, 6, 3, 3)
        (layer.circulant_filters() * upstream).sum().backward()
        # eq. 8: sum over the K copies of their gradients mapped back by the inverse permutation P
        expected = torch.zeros(5, 6, 9)
        for j in range(8):
            perm = ring_permutation(j)
            block = upstream[j * 5:(j + 1) * 5].flatten(2)
            expected[:, :, perm] += block
        assert torch.allclose(layer.weight.grad, expected.view(5, 6, 3, 3), atol=1e-6)

    def test_forward_is_max_over_orientations(self):
        _, layer = make_layer("cbcn", orientations=4)
        x = torch.randn(2, 6, 8, 8)
        g = layer.circulant_filters().detach()
        alpha = layer.latent_weight.detach().abs().mean(dim=(1, 2, 3)).repeat(4).view(-1, 1, 1, 1)
        full = F.conv2d(binary_sign(x), alpha * binary_sign(g), padding=1)
        expected = full.view(2, 4, 5, 8, 8).amax(1) + layer.bias.view(1, -1, 1, 1)
        assert torch.allclose(layer(x), expected, atol=1e-5)


class TestRBCN:
    def test_c_starts_at_least_squares_solution(self):
        _, layer = make_layer("rbcn")
        assert torch.allclose(layer.C, layer.latent_weight.detach().abs().mean(dim=(0, 1)))

    def test_forward_uses_the_mean_of_c_in_training_and_eval(self):
        _, layer = make_layer("rbcn")
        sign_w = binary_sign(layer.latent_weight.detach())
        for mode in (True, False):
            layer.train(mode)
            assert torch.allclose(layer.binarized_weight(), layer.C.detach().mean() * sign_w)
        signs, mult = layer.export_weight()
        assert torch.equal(signs, sign_w) and torch.allclose(mult, layer.C.detach().mean().expand(5))

    def test_kernel_loss_value_and_gradients_are_eqs_3_11_15(self):
        _, layer = make_layer("rbcn", kernel_loss_weight=0.1)
        w, c = layer.latent_weight.detach(), layer.C.detach()
        w_hat = binary_sign(w)
        residual = w - c * w_hat
        loss = layer.extra_losses()["rbcn_kernel"]
        assert torch.allclose(loss, 0.05 * residual.pow(2).sum())
        loss.backward()
        assert torch.allclose(layer.C.grad, -0.1 * (residual * w_hat).sum(dim=(0, 1)), atol=1e-6)  # eq. 15
        inside = (w >= -1) & (w < 1)
        eq8 = torch.where(inside, 2 - 2 * w.abs(), torch.zeros_like(w))
        assert torch.allclose(layer.weight.grad, -0.1 * residual * c * eq8, atol=1e-6)  # eq. 11 x eq. 8


class TestTrainingPolicy:
    """The hooks the trainer asks instead of probing layers (binarize.methods.TrainingPolicy)."""

    def test_policy_comes_from_the_layers(self):
        from binarize.methods import TrainingPolicy, training_policy

        conv, layer = make_layer("rbcn")
        assert training_policy(nn.Sequential(layer)) is get_method("rbcn")
        assert type(training_policy(nn.Sequential(conv))) is TrainingPolicy  # a float model: the defaults
        _, other = make_layer("xnor")
        with pytest.raises(ValueError, match="mixes binary layers of several methods"):
            training_policy(nn.Sequential(layer, other))

    def test_rbcn_trains_c_apart_at_its_own_rate(self):
        from binarize.finetune import FinetuneConfig

        _, a = make_layer("rbcn")
        _, b = make_layer("rbcn")
        model = nn.Sequential(a, b)
        (group,) = get_method("rbcn").parameter_groups(model, FinetuneConfig(rbcn_c_lr=0.003))
        assert [id(p) for p in group.params] == [id(a.C), id(b.C)] and group.lr == 0.003
        assert get_method("xnor").parameter_groups(model, FinetuneConfig()) == []

    def test_biper_phases_follow_the_stage_of_the_student(self):
        from binarize.finetune import FinetuneConfig

        biper = get_method("biper")
        _, layer = make_layer("biper")
        model = nn.Sequential(layer)
        phases = biper.training_phases(model, FinetuneConfig(epochs=3, lr=0.01, stage1_lr=0.1))
        assert [(p.name, p.epochs, p.lr, p.stage) for p in phases] == [("stage 1", 3, 0.1, 1), ("stage 2", 3, 0.01, 2)]
        biper.prepare_phase(model, phases[1])
        assert int(layer.stage) == 2
        assert [p.stage for p in biper.training_phases(model, FinetuneConfig(epochs=3))] == [2]
        with pytest.raises(ValueError, match="already in stage 2"):
            biper.training_phases(model, FinetuneConfig(stage1_epochs=1))
        with pytest.raises(ValueError, match="stage1_epochs=1 needs a binary student and two_step=True"):
            get_method("xnor").training_phases(model, FinetuneConfig(stage1_epochs=1, two_step=False))
