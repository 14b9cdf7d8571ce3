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
from . import Method, PaperRecipe, ParameterGroup, register_method


@dataclass
class RBCNConfig(ConvertConfig):
    """RBCN.

    - ``kernel_loss_weight``: lambda1 of eq. 3. The paper uses 0.01 on CIFAR and 0.1 on ImageNet
      with SGD (``FinetuneConfig.paper("rbcn", ...)`` sets them); the default is 0.001. Under the
      default Adam, eq. 11's gradient on a latent weight is rescaled like the task loss's, so on a
      weight with a small task gradient the kernel loss sets the direction at the full step size
      and, for |W| < C, pushes W towards zero and past it: the term flips weights. With lambda1 =
      0.01 that cost ResNet-8 2.5-7.8 pp in 8 epochs against 0.001, which was within -0.3 to +0.9
      pp of 0.01 on LeNet (benchmarks/RESULTS.md, "RBCN's lambda1").
    - ``activation_estimator``/``weight_estimator``: "approx_sign" (eq. 8).
    """

    kernel_loss_weight: float = 0.001
    activation_estimator: str = "approx_sign"
    weight_estimator: str = "approx_sign"
    method = "rbcn"


class RectifiedWeights:
    def _init_method_state(self):
        w = self.latent_weight.detach()
        self.C = nn.Parameter(w.abs().mean(dim=(0, 1)) if w.dim() > 2 else w.abs().mean())

    def binarized_weight(self):
        return self.C.mean() * self.weight_estimator(self.latent_weight)

    def export_weight(self):
        w = self.latent_weight.detach()
        return binary_sign(w), self.C.detach().mean().expand(w.shape[0]).clone()

    def extra_losses(self):
        w = self.latent_weight
        w_hat = self.weight_estimator(w)
        residual = w.detach() - self.C * w_hat
        return {"rbcn_kernel": 0.5 * self.config.kernel_loss_weight * residual.pow(2).sum()}


class RBCNConv2d(RectifiedWeights, BinaryConv2d):
    pass


class RBCNLinear(RectifiedWeights, BinaryLinear):
    pass


# Section 3.1. Every recipe trains with the softmax loss, the kernel loss (lambda1) and the GAN term
# (lambda2), no logit distillation, no center loss, and updates the BatchNorm layers after each epoch
# (algorithm 1, line 17). The paper gives no learning rate or learning-rate schedule ("The training
# details are the same as in [Zagoruyko and Komodakis, 2016]" for WRN): those keep binarize's defaults.
# "A degradation of 10%" is read as a factor 0.9 (loss_weight_decay).
_RBCN_LOSSES = {"kd_weight": 0.0, "center_loss_weight": 0.0, "bn_refresh": True, "loss_weight_decay": 0.9,
                "warmup_epochs": 0.0, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4}
#: "on CIFAR10/100, lambda1 and lambda2 are set as 0.01 with a degradation of 10% for every 60 epochs
#: before reaching the maximum epoch of 200." (ResNet18; WRN: the same lambdas)
CIFAR = PaperRecipe(finetune={"gan_weight": 0.01, "loss_weight_decay_every": 60, "epochs": 200, **_RBCN_LOSSES},
                    convert={"kernel_loss_weight": 0.01}, source="section 3.1, WRN and ResNet18 backbones")
#: "SGD is used as the optimization algorithm with a momentum of 0.9 and a weight decay 1e-4. lambda1
#: and lambda2 are set as 0.1 with a degradation of 10% for every 20 epochs before reaching the maximum
#: epoch of 70 on ImageNet"
IMAGENET = PaperRecipe(finetune={"gan_weight": 0.1, "loss_weight_decay_every": 20, "epochs": 70, **_RBCN_LOSSES},
                       convert={"kernel_loss_weight": 0.1}, source="section 3.1, ResNet18 backbone")


class RBCNMethod(Method):
    """C trains with its own optimizer at ``rbcn_c_lr`` (eta2 of eq. 15); the BatchNorm layers are
    updated after every epoch (algorithm 1, line 17; ``bn_refresh_mode`` says how)."""

    finetune_defaults = {"bn_refresh": True, "gan_weight": 0.01}
    paper_recipes = {"cifar10": CIFAR, "cifar100": CIFAR, "imagenet": IMAGENET}

    def parameter_groups(self, model, config):
        params = [m.C for m in model.modules() if isinstance(m, RectifiedWeights) and m.C.requires_grad]
        return [ParameterGroup("rbcn_c", params, config.rbcn_c_lr)] if params else []


register_method(RBCNMethod("rbcn", RBCNConfig, RBCNConv2d, RBCNLinear))
