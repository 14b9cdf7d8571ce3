"""Quantization-error analysis of BiPer (Vargas et al., 2024, section 2.2).

Latent weights are modelled as a zero-mean Laplace variable ``W ~ La(0, b)``. BiPer binarizes
``w_hat = sin(omega w)`` into ``gamma sign(w_hat)``; with ``x = omega b``:

- eq. 8, the optimal scale: ``gamma = E|sin(omega W)| = x (e^{pi/x} + 1) / ((x^2 + 1)(e^{pi/x} - 1))``
  (computed here as ``x coth(pi / 2x) / (x^2 + 1)``, which does not overflow for small x);
- eq. 7, the quantization error ``QE = E[(sin(omega W) - gamma sign(sin(omega W)))^2]``
  ``= 2x^2 / (4x^2 + 1) - 2 gamma x coth(pi / 2x) / (x^2 + 1) + gamma^2``.

With the optimal gamma, QE peaks at 0.102835 for ``x = 0.954882`` (the paper's statement).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from torch import nn

#: b * omega at which QE (with the optimal scale) is largest, and that largest QE.
QE_PEAK_PRODUCT = 0.954882
QE_PEAK = 0.102835
#: b * omega at which QE is half of QE_PEAK below the peak; ``omega="auto"`` puts every layer there.
AUTO_OMEGA_PRODUCT = 0.277770


def _coth(y):
    return 1.0 / np.tanh(y)


def optimal_scale(b, omega):
    """Eq. 8: the scale gamma minimising the QE, for Laplace parameter ``b`` and frequency ``omega``."""
    x = np.asarray(omega, dtype=np.float64) * np.asarray(b, dtype=np.float64)
    return x * _coth(np.pi / (2 * x)) / (x * x + 1)


def quantization_error(b, omega, gamma=None):
    """Eq. 7: E[(sin(omega W) - gamma sign(sin(omega W)))^2] for W ~ Laplace(0, b).
    ``gamma`` defaults to the optimal scale of eq. 8."""
    x = np.asarray(omega, dtype=np.float64) * np.asarray(b, dtype=np.float64)
    if gamma is None:
        gamma = optimal_scale(b, omega)
    gamma = np.asarray(gamma, dtype=np.float64)
    return 2 * x * x / (4 * x * x + 1) - 2 * gamma * x * _coth(np.pi / (2 * x)) / (x * x + 1) + gamma ** 2


def monte_carlo_quantization_error(b: float, omega: float, samples: int = 1_000_000,
                                   seed: int = 0) -> float:
    """Eq. 5 estimated on Laplace samples, with the empirical optimal scale mean|sin(omega w)|."""
    w = np.random.default_rng(seed).laplace(0.0, b, samples)
    w_hat = np.sin(omega * w)
    gamma = np.abs(w_hat).mean()
    return float(np.mean((w_hat - gamma * np.where(w_hat >= 0, 1.0, -1.0)) ** 2))


def laplace_fit(weights: torch.Tensor, dim: Optional[int] = None) -> torch.Tensor:
    """Maximum-likelihood b of a zero-mean Laplace fit: mean |w| (over all weights, or per
    slice along ``dim`` = the output-channel axis when ``dim=0``)."""
    w = weights.detach()
    if dim is None:
        return w.abs().mean()
    return w.abs().transpose(0, dim).flatten(1).mean(1)


def auto_omega(b: float) -> float:
    """The ``omega="auto"`` rule: ``omega = AUTO_OMEGA_PRODUCT / b``. Every layer then sits at the
    same point of the QE curve, on the rising side where QE is half its peak (0.0514), whatever
    the spread of its weights; ``P(|w| > pi/omega) = e^{-pi/0.2778} ~ 1e-5``, so almost no
    pretrained weight changes sign. (The paper's fixed omega = 20 lands there for b ~ 0.014.)"""
    return AUTO_OMEGA_PRODUCT / float(b)


@dataclass
class LayerQE:
    name: str
    b: float
    omega: float
    qe: float  # eq. 7 at the layer's own omega
    qe_at_20: float  # eq. 7 at the paper's omega = 20
    qe_auto: float  # eq. 7 at the omega="auto" choice
    measured_qe: float  # the layer's actual weights, with its actual per-channel scale


@dataclass
class QEReport:
    layers: List[LayerQE]

    def __str__(self) -> str:
        head = f"{'layer':<28} {'b':>9} {'omega':>8} {'QE':>8} {'QE@20':>8} {'QE auto':>8} {'measured':>9}"
        rows = [head, "-" * len(head)]
        for r in self.layers:
            rows.append(f"{r.name:<28} {r.b:>9.5f} {r.omega:>8.2f} {r.qe:>8.5f} {r.qe_at_20:>8.5f} "
                        f"{r.qe_auto:>8.5f} {r.measured_qe:>9.5f}")
        return "\n".join(rows)


def quantization_report(model: nn.Module) -> QEReport:
    """Per-layer QE of the BiPer layers of a converted model: the closed form at the layer's
    omega, at omega = 20 and at omega="auto", next to the QE measured on its actual weights."""
    from .methods.biper import BiPerWeights

    rows = []
    for name, m in model.named_modules():
        if isinstance(m, BiPerWeights):
            b = float(laplace_fit(m.latent_weight))
            omega = float(m.omega)
            w_hat = torch.sin(m.omega * m.latent_weight.detach())
            gamma = w_hat.abs().flatten(1).mean(1).view(-1, *([1] * (w_hat.dim() - 1)))
            measured = float(((w_hat - gamma * torch.where(w_hat >= 0, 1.0, -1.0)) ** 2).mean())
            rows.append(LayerQE(name, b, omega, float(quantization_error(b, omega)),
                                float(quantization_error(b, 20.0)),
                                float(quantization_error(b, auto_omega(b))), measured))
    if not rows:
        raise ValueError("quantization_report: the model has no BiPer layers "
                         "(convert it with method='biper')")
    return QEReport(rows)
