"""XNOR-Net (Rastegari et al., 2016), the baseline.

Weights: ``alpha * sign(w)`` with ``alpha = mean |w|`` per output channel; the gradient
reaches ``w`` through ``alpha`` and through the clipped STE of the sign.
Activations: sign with the clipped STE (gradient 1 where |x| <= 1).
Cost: one bit per weight plus one float per output channel.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ConvertConfig
from ..layers import BinaryConv2d, BinaryLinear, mean_abs_per_channel, per_channel
from ..quantizers import binary_sign
from . import Method, register_method


@dataclass
class XnorConfig(ConvertConfig):
    """XNOR-Net. ``activation_estimator``/``weight_estimator``: clipped STE ("ste").
    ``double_skip`` defaults to False: the paper's network has only the original shortcuts, and with
    double skips ResNet-8 fine-tuning read 94.2 % on three seeds against 95.2 +- 0.7 % without (one
    run's last epoch fell to 63.5 %, 94.4 % after finetune's BatchNorm check); a user's own loop
    gained 5 pp (benchmarks/RESULTS.md, "A user's own loop on six seeds" and "The BatchNorm check
    that ends a run").
    ``latent_gain`` defaults to 1: without double skips the gain's larger steps made a user's own
    Adam loop unstable (one seed of three ended at 58.9 % test error after a BatchNorm refresh,
    against 18.7 % without the gain; benchmarks/RESULTS.md, "Latent gain")."""

    double_skip: bool = False
    latent_gain: float = 1.0
    activation_estimator: str = "ste"
    weight_estimator: str = "ste"
    method = "xnor"


class XnorWeights:
    def _init_method_state(self):
        pass

    def binarized_weight(self):
        w = self.latent_weight
        return per_channel(mean_abs_per_channel(w), w) * self.weight_estimator(w)

    def export_weight(self):
        w = self.latent_weight.detach()
        return binary_sign(w), mean_abs_per_channel(w)


class XnorConv2d(XnorWeights, BinaryConv2d):
    pass


class XnorLinear(XnorWeights, BinaryLinear):
    pass


register_method(Method("xnor", XnorConfig, XnorConv2d, XnorLinear))
