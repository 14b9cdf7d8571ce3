"""binarize.summary against RBCN's table 6, and binarize.analysis against BiPer's eqs. 7-8."""
import math

import numpy as np
import pytest
import torch
import torchvision

import binarize
from binarize import analysis


@pytest.fixture(scope="module")
def resnet18():
    return torchvision.models.resnet18()


def test_float_resnet18_matches_rbcn_table6(resnet18):
    s = binarize.summary(resnet18, (1, 3, 224, 224))
    assert s.memory_bits / 1e6 == pytest.approx(374.1, rel=0.02)
    assert s.flops == pytest.approx(1.81e9, rel=0.02)
    assert s.binary_params == 0 and s.binary_macs == 0


@pytest.mark.parametrize("method", ["xnor", "biper", "rbcn"])
def test_binarized_resnet18_matches_rbcn_table6(resnet18, method):
    bnn = binarize.convert(resnet18, method)
    s = binarize.summary(bnn, (1, 3, 224, 224))
    assert s.memory_bits / 1e6 == pytest.approx(33.7, rel=0.02)
    assert s.flops == pytest.approx(1.67e8, rel=0.02)
    # the split by precision adds up and every 3x3 conv of the residual stages is binary
    assert s.binary_params == sum(m.weight.numel() for _, m in binarize.binary_layers(bnn))
    assert s.float_macs + s.binary_macs == pytest.approx(1.814e9, rel=0.001)
    table = str(s)
    assert "layer4.1.conv2" in table and "binary" in table and "FLOPs" in table


def test_cbcn_costs_k_times_the_binary_macs(resnet18):
    s1 = binarize.summary(binarize.convert(resnet18, "cbcn", orientations=1), (1, 3, 64, 64))
    s4 = binarize.summary(binarize.convert(resnet18, "cbcn", orientations=4), (1, 3, 64, 64))
    assert s4.binary_macs == 4 * s1.binary_macs and s4.float_macs == s1.float_macs


def test_qe_peak_is_the_papers_statement():
    x = np.linspace(0.5, 1.5, 200001)
    qe = analysis.quantization_error(x, 1.0)
    assert round(float(x[qe.argmax()]), 5) == pytest.approx(0.954882, abs=1e-5)
    assert round(float(qe.max()), 6) == 0.102835
    assert float(analysis.quantization_error(analysis.QE_PEAK_PRODUCT, 1.0)) == pytest.approx(analysis.QE_PEAK, abs=1e-6)


@pytest.mark.parametrize("b,omega", [(0.01, 20.0), (0.05, 20.0), (0.1, 5.0), (0.02, 100.0)])
def test_closed_form_agrees_with_monte_carlo(b, omega):
    mc = analysis.monte_carlo_quantization_error(b, omega, samples=400_000)
    assert float(analysis.quantization_error(b, omega)) == pytest.approx(mc, rel=0.02, abs=2e-4)
    w = np.random.default_rng(1).laplace(0, b, 400_000)
    assert float(analysis.optimal_scale(b, omega)) == pytest.approx(np.abs(np.sin(omega * w)).mean(), rel=0.01)


def test_optimal_scale_is_the_minimiser_and_stable_for_small_products():
    b, omega = 0.03, 20.0
    gamma = float(analysis.optimal_scale(b, omega))
    for other in (0.9 * gamma, 1.1 * gamma):
        assert analysis.quantization_error(b, omega, other) > analysis.quantization_error(b, omega)
    assert math.isfinite(float(analysis.optimal_scale(1e-4, 1.0)))  # e^{pi/x} would overflow


def test_laplace_fit_recovers_b():
    w = torch.from_numpy(np.random.default_rng(0).laplace(0, 0.037, (64, 64, 3, 3))).float()
    assert float(analysis.laplace_fit(w)) == pytest.approx(0.037, rel=0.01)
    assert analysis.laplace_fit(w, dim=0).shape == (64,)


def test_auto_omega_puts_every_layer_at_half_peak_qe(resnet18):
    fixed = analysis.quantization_report(binarize.convert(resnet18, "biper"))
    auto = analysis.quantization_report(binarize.convert(resnet18, "biper", omega="auto"))
    assert len(auto.layers) == 16
    for row in auto.layers:
        assert row.qe == pytest.approx(analysis.QE_PEAK / 2, rel=1e-3)
        assert row.omega == pytest.approx(analysis.AUTO_OMEGA_PRODUCT / row.b, rel=1e-5)
    spread = lambda rep: np.ptp([r.qe for r in rep.layers])
    assert spread(auto) < spread(fixed)
    assert "QE auto" in str(auto)
    with pytest.raises(ValueError, match="no BiPer layers"):
        analysis.quantization_report(binarize.convert(resnet18, "xnor"))
