"""RBCN: rectified binary convolutional networks (IJCAI 2019).

Weights (eqs. 5-6): ``W_hat = sign(W)`` with the piecewise-polynomial gradient of eq. 8
(2 + 2W on [-1, 0), 2 - 2W on [0, 1), 0 elsewhere: the "approx_sign" estimator), and the layer
convolves with ``C (.) W_hat``, where C is one learnable k x k matrix per layer, shared by all its
filters (for a Linear layer, a single scalar). C starts at the least-squares solution of the kernel
loss, ``C[p] = mean_i |W_i[p]|``, so the pretrained filters are approximated as well as possible.

Kernel loss (eq. 3): ``lambda1 / 2 * sum_i ||W_i - C (.) W_hat_i||^2``, returned by
``binarize.extra_losses(model)`` as ``"rbcn_kernel"``. Its gradients are eq. 11 (to W, through
W_hat only: W is the fixed target) and eq. 15 (to C). The GAN term and the BN refresh after each
epoch belong to the trainer.

Forward: the paper's implementation replaces C by its mean C* in the forward pass (eq. 6, "C is
actually C*", and footnote 2), so one scalar multiplies the binary conv. binarize does the same in
training and in eval mode: were training to use the full C and eval C*, the BatchNorm statistics
gathered in training would not match the eval-mode layer (measured on LeNet/MNIST-5k: 42 % accuracy
with C, 11 % with C*). C keeps its k x k elements: the kernel loss fits them, their mean scales the conv.
Cost: as XNOR-Net at inference; training adds k*k parameters per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ConvertConfig
from ..layers import BinaryConv2d, BinaryLinear
from ..quantizers import binary_sign
from . import Method, ParameterGroup, register_method


@dataclass
class RBCNConfig(ConvertConfig):
    """RBCN.

    - ``kernel_loss_weight``: lambda1 of eq. 3 (paper, CIFAR: 0.01; ImageNet: 0.1).
    - ``activation_estimator``/``weight_estimator``: "approx_sign" (eq. 8).
    """

    kernel_loss_weight: float = 0.01
    activation_estimator: str = "approx_sign"
    weight_estimator: str = "approx_sign"
    method = "rbcn"


class RectifiedWeights:
    def _init_method_state(self):
        w = self.weight.detach()
        self.C = nn.Parameter(w.abs().mean(dim=(0, 1)) if w.dim() > 2 else w.abs().mean())

    def binarized_weight(self):
        return self.C.mean() * self.weight_estimator(self.weight)

    def export_weight(self):
        w = self.weight.detach()
        return binary_sign(w), self.C.detach().mean().expand(w.shape[0]).clone()

    def extra_losses(self):
        w_hat = self.weight_estimator(self.weight)
        residual = self.weight.detach() - self.C * w_hat
        return {"rbcn_kernel": 0.5 * self.config.kernel_loss_weight * residual.pow(2).sum()}


class RBCNConv2d(RectifiedWeights, BinaryConv2d):
    pass


class RBCNLinear(RectifiedWeights, BinaryLinear):
    pass


class RBCNMethod(Method):
    """C trains with its own optimizer at ``rbcn_c_lr`` (eta2 of eq. 15); the BatchNorm statistics
    are refreshed after every epoch (algorithm 1, line 17)."""

    finetune_defaults = {"bn_refresh": True}

    def parameter_groups(self, model, config):
        params = [m.C for m in model.modules() if isinstance(m, RectifiedWeights) and m.C.requires_grad]
        return [ParameterGroup("rbcn_c", params, config.rbcn_c_lr)] if params else []


register_method(RBCNMethod("rbcn", RBCNConfig, RBCNConv2d, RBCNLinear))
