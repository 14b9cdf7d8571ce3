"""Forward values and gradients of every sign estimator against the papers' formulas."""
import math

import pytest
import torch

from binarize.quantizers import ESTIMATORS, binary_sign, get_estimator

X = torch.tensor([-2.0, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 1.5], dtype=torch.float64)


def grad_of(fn, x, **params):
    x = x.clone().requires_grad_(True)
    y = fn(x, **params)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad


def test_binary_sign_maps_zero_to_plus_one():
    assert binary_sign(X).tolist() == [-1, -1, -1, -1, 1, 1, 1, 1, 1]
    assert torch.sign(torch.tensor(0.0)) == 0  # why binarize does not use torch.sign


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_forward_is_binary_sign(name):
    params = {"omega": 1.0} if name == "sine" else {}
    y, _ = grad_of(ESTIMATORS[name], X, **params)
    expected = binary_sign(torch.sin(X)) if name == "sine" else binary_sign(X)
    assert torch.equal(y, expected)


def test_ste_gradient_is_one_inside_unit_interval():
    _, g = grad_of(get_estimator("ste"), X)
    assert g.tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 0]


def test_approx_sign_gradient_matches_bireal_and_rbcn_eq8():
    _, g = grad_of(get_estimator("approx_sign"), X)
    expected = [0.0, 2 + 2 * -1.0, 2 + 2 * -0.75, 2 + 2 * -0.25, 2.0, 2 - 2 * 0.25, 2 - 2 * 0.75, 0.0, 0.0]
    assert torch.allclose(g, torch.tensor(expected, dtype=g.dtype))


@pytest.mark.parametrize("amplitude,sigma", [(3 * math.sqrt(2 * math.pi), 1.0), (1.0, 0.5)])
def test_gaussian_gradient_matches_cbcn_eq10(amplitude, sigma):
    _, g = grad_of(get_estimator("gaussian"), X, amplitude=amplitude, sigma=sigma)
    expected = amplitude / (sigma * math.sqrt(math.pi)) * torch.exp(-(X ** 2) / sigma ** 2)
    assert torch.allclose(g, expected)


@pytest.mark.parametrize("omega", [1.0, 20.0])
def test_sine_forward_and_gradient_match_biper_eqs_1_2(omega):
    w = torch.linspace(-0.4, 0.4, 101, dtype=torch.float64)
    y, g = grad_of(get_estimator("sine"), w, omega=omega)
    assert torch.equal(y, binary_sign(torch.sin(omega * w)))
    assert torch.allclose(g, omega * torch.cos(omega * w))
    # the periodic forward differs from sign(w) once |w| > pi / omega
    if omega == 20.0:
        assert not torch.equal(y, binary_sign(w))


def test_unknown_estimator_names_the_choices():
    with pytest.raises(ValueError, match="approx_sign"):
        get_estimator("nope")
