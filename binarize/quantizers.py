"""Sign estimators: the forward binarization and the surrogate gradients of the papers.

Every estimator maps a real tensor to {-1, +1} in the forward pass and replaces the
(almost everywhere zero) derivative of the sign function by a surrogate in the backward pass.
Each one is a small registered function, so a method's config can name the estimator it uses
and an ablation can swap it (``BiRealConfig(activation_estimator="gaussian")``).

Convention used everywhere in binarize (training layers, export, the C++ kernel):
**sign(0) = +1**. ``torch.sign`` returns 0 at 0, which would make a binary value ternary and
break bit-packing, so :func:`binary_sign` is used instead of it.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch

__all__ = ["binary_sign", "ESTIMATORS", "register_estimator", "get_estimator",
           "ste", "approx_sign", "gaussian", "sine"]


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` and -1 elsewhere, in ``x``'s dtype (no gradient)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)  # scalar branches: no ones_like temporaries


class _SignWithSurrogate(torch.autograd.Function):
    """forward: ``binary_sign(x)``; backward: ``grad * derivative(x)``."""

    @staticmethod
    def forward(ctx, x, derivative):
        ctx.save_for_backward(x)
        ctx.derivative = derivative
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.derivative(x), None


ESTIMATORS: Dict[str, Callable[..., torch.Tensor]] = {}


def register_estimator(name: str):
    """Register ``fn(x, **params) -> tensor in {-1, +1}`` under ``name``."""

    def decorate(fn):
        if name in ESTIMATORS:
            raise ValueError(f"estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return decorate


def get_estimator(name: str) -> Callable[..., torch.Tensor]:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; registered: {sorted(ESTIMATORS)}") from None


@register_estimator("ste")
def ste(x: torch.Tensor) -> torch.Tensor:
    """Clipped straight-through estimator (BinaryNet, XNOR-Net): d/dx = 1 where |x| <= 1, else 0."""
    return _SignWithSurrogate.apply(x, lambda v: (v.abs() <= 1).to(v.dtype))


@register_estimator("approx_sign")
def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real ApproxSign, also RBCN eq. 8 (an approximation of 2 x Dirac delta):
    d/dx = 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere."""
    # 2 - 2|x| is exactly the two pieces inside [-1, 1] and <= 0 outside: clamping gives the zeros.
    return _SignWithSurrogate.apply(x, lambda v: (2 - 2 * v.abs()).clamp_(min=0))


@register_estimator("gaussian")
def gaussian(x: torch.Tensor, amplitude: float = 3 * math.sqrt(2 * math.pi),
             sigma: float = 1.0) -> torch.Tensor:
    """CBCN eq. 10: d/dx = A / (sigma sqrt(pi)) exp(-x^2 / sigma^2); the paper uses
    A = 3 sqrt(2 pi), sigma = 1."""
    coeff = amplitude / (sigma * math.sqrt(math.pi))
    return _SignWithSurrogate.apply(x, lambda v: coeff * torch.exp(-(v / sigma) ** 2))


class _SineSign(torch.autograd.Function):
    """BiPer eqs. 1-2: forward sign(sin(omega w)); backward through w_hat = sin(omega w)."""

    @staticmethod
    def forward(ctx, w, omega):
        ctx.save_for_backward(w, omega)
        return binary_sign(torch.sin(omega * w))

    @staticmethod
    def backward(ctx, grad):
        w, omega = ctx.saved_tensors
        grad_w = grad * omega * torch.cos(omega * w)
        return grad_w, None


@register_estimator("sine")
def sine(x: torch.Tensor, omega=20.0) -> torch.Tensor:
    """BiPer: forward sign(sin(omega x)), backward d/dx = omega cos(omega x).
    ``omega`` is a float or a tensor broadcastable to ``x`` (one value per layer)."""
    omega = torch.as_tensor(omega, dtype=x.dtype, device=x.device)
    return _SineSign.apply(x, omega)
