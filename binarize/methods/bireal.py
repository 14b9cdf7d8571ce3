"""Bi-Real Net (Liu et al., 2018).

Activations: sign with the ApproxSign gradient (2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere).
Weights: magnitude-aware sign, ``mean|w| * sign(w)`` per output channel, with the clipped STE.
Double skip connections (one shortcut per binary conv) are added by the conversion pass.
Cost: as XNOR-Net.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConvertConfig
from . import Method, register_method
from .xnor import XnorWeights
from ..layers import BinaryConv2d, BinaryLinear


@dataclass
class BiRealConfig(ConvertConfig):
    """Bi-Real Net. ``activation_estimator``: "approx_sign"; ``weight_estimator``: "ste"."""

    activation_estimator: str = "approx_sign"
    weight_estimator: str = "ste"
    method = "bireal"


# Bi-Real's magnitude-aware weights are XNOR's alpha * sign(w); the methods differ in the
# activation estimator (config) and in the double skips, which the graph pass adds for both.
class BiRealConv2d(XnorWeights, BinaryConv2d):
    pass


class BiRealLinear(XnorWeights, BinaryLinear):
    pass


register_method(Method("bireal", BiRealConfig, BiRealConv2d, BiRealLinear))
