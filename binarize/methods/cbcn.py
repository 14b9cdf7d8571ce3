"""CBCN: circulant binary convolutional networks (Liu et al., CVPR 2019).

Circulant filters (eqs. 1-2, figs. 3-4): each learned 3x3 filter ``W_i`` yields K orientations
``G_ij = W_i o m_j``, j = 0..K-1, by shifting its 8 outer-ring weights counter-clockwise by
``j * 8/K`` positions (45 degrees per position) with the centre fixed; ``m_0`` is the learned
filter itself. A shift by 2 positions is exactly a 90-degree rotation, so for other square
kernel sizes K in {1, 2, 4} uses ``torch.rot90``; K = 8 needs the 3x3 ring and other kernels raise.

CBConv (eqs. 3-6) and the choice binarize makes where the paper leaves it open: the paper widens
every feature map K times (each channel carries K orientation channels, a network of "kernel
stage" 16-32-64 really has 64-128-256 channels), which changes every layer's interface. To keep a
pretrained network's interface, a ``CBCNConv2d`` with C_in -> C_out channels convolves the
binarized input with all K * C_out binary circulant filters (eq. 5: the K responses
``F_{h,0..K-1}``) and keeps, per output channel and position, the strongest orientation response
(a max over j, orientation pooling). Parameters stay those of the float conv (one learned filter
per output channel, plus XNOR's per-channel scale ``mean|W_i|``, shared by the K copies, so the max
commutes with it); binary MACs and the conv's transient output grow K times; the packed weights
of the exported model hold the K copies (K bits per weight).

Circulant back propagation (eq. 8): the gradient of a learned filter is the sum of the gradients
of its K copies, each mapped back through the inverse permutation P; autograd through the index
permutation computes exactly that (tested). The sign gradient of the filters is the Gaussian of
eq. 10 (stated for dG_hat/dG), A = 3 sqrt(2 pi), sigma = 1 (section 4.1). Activations use Bi-Real's
ApproxSign: the Gaussian peaks at A / (sigma sqrt(pi)) = 4.24, and applied to activations that
factor compounds layer after layer in the backward pass (DenseNet-121's gradients overflow to
inf); ``activation_estimator="gaussian"`` restores it for shallow networks. CBCN's centre loss and doubled
shortcuts are training / graph options (double skips are on by default).
Linear layers (``binarize_linear=True``) get the Gaussian sign and XNOR scale, without rotations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ConvertConfig
from ..layers import BinaryConv2d, BinaryLinear, mean_abs_per_channel, per_channel
from ..quantizers import binary_sign
from . import Method, PaperRecipe, register_method
from .xnor import XnorWeights

#: Flat (row-major) indices of the 3x3 outer ring, in counter-clockwise order from the top-left.
RING_3X3 = (0, 3, 6, 7, 8, 5, 2, 1)


def ring_permutation(shift: int) -> torch.Tensor:
    """Index map of the circulant transfer matrix column m_shift for a flattened 3x3 filter:
    ``rotated = w.flatten()[perm]`` moves every ring weight ``shift`` positions counter-clockwise."""
    perm = list(range(9))
    for p, src in enumerate(RING_3X3):
        perm[RING_3X3[(p + shift) % 8]] = src
    return torch.tensor(perm)


@dataclass
class CBCNConfig(ConvertConfig):
    """CBCN.

    - ``orientations``: K, the number of circulant copies per filter, one of 1, 2, 4, 8 (paper: 4).
    - ``gaussian_amplitude``, ``gaussian_sigma``: A and sigma of the eq. 10 sign gradient
      (paper: 3 sqrt(2 pi) and 1).
    - ``weight_estimator``: "gaussian" (eq. 10); ``activation_estimator``: "approx_sign".
    """

    orientations: int = 4
    gaussian_amplitude: float = 3 * math.sqrt(2 * math.pi)
    gaussian_sigma: float = 1.0
    activation_estimator: str = "approx_sign"
    weight_estimator: str = "gaussian"
    method = "cbcn"

    def __post_init__(self):
        super().__post_init__()
        if self.orientations not in (1, 2, 4, 8):
            raise ValueError(f"orientations={self.orientations!r}: expected 1, 2, 4 or 8")

    def estimator_kwargs(self, name):
        if name == "gaussian":
            return {"amplitude": self.gaussian_amplitude, "sigma": self.gaussian_sigma}
        return {}


class CBCNConv2d(BinaryConv2d):
    def _init_method_state(self):
        k = self.config.orientations
        kh, kw = self.kernel_size
        if kh != kw:
            raise ValueError(f"CBCN rotates square kernels only; this conv has kernel {self.kernel_size}")
        if k == 8 and (kh, kw) != (3, 3):
            raise ValueError(f"CBCN with orientations=8 needs 3x3 kernels (45-degree ring shifts); "
                             f"this conv has kernel {self.kernel_size}: use orientations <= 4 or exclude it")
        self.orientations = k
        perms = torch.stack([ring_permutation(j * 8 // k) for j in range(k)]) if (kh, kw) == (3, 3) else None
        self.register_buffer("ring_perms", perms, persistent=False)

    def circulant_filters(self) -> torch.Tensor:
        """G (eq. 2), orientation-major: rows ``j * C_out + i`` hold ``W_i o m_j``."""
        w, k = self.weight, self.orientations
        if self.ring_perms is not None:
            flat = w.flatten(2)
            copies = [flat[:, :, perm].view_as(w) for perm in self.ring_perms]
        else:
            copies = [torch.rot90(w, j * 4 // k, dims=(2, 3)) for j in range(k)]
        return torch.cat(copies, 0)

    def _scale(self) -> torch.Tensor:
        return mean_abs_per_channel(self.weight).repeat(self.orientations)

    def binarized_weight(self):
        g = self.circulant_filters()
        return per_channel(self._scale(), g) * self.weight_estimator(g)

    def export_weight(self):
        return binary_sign(self.circulant_filters().detach()), self._scale().detach()

    def forward(self, x):
        y = self.conv(self.binarize_input(x), self.binarized_weight(), None)
        n, _, h, w = y.shape
        y = y.view(n, self.orientations, self.out_channels, h, w).amax(1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self):
        return f"{super().extra_repr()}, orientations={self.orientations}"


class CBCNLinear(XnorWeights, BinaryLinear):
    pass


# Section 4.1. Every recipe trains with the softmax (cross-entropy) and center losses (the center
# loss's weight is not given: the method's default below), no distillation, no discriminators, no
# BatchNorm refresh. "A degradation of 10%" is read as a factor 0.9 (lr_decay; 0.1 is the other reading).
_CBCN_LOSSES = {"kd_weight": 0.0, "gan_weight": 0.0, "center_loss_weight": None, "bn_refresh": False,
                "warmup_epochs": 0.0}
#: "The initial learning rate is 0.01 with no degradation before reaching the maximum epoch of 50 for
#: MNIST and MNIST-rot." (LeNet; optimizer not given)
MNIST = PaperRecipe(finetune={"lr": 0.01, "schedule": "constant", "epochs": 50, **_CBCN_LOSSES},
                    source="section 4.1, LeNet backbone")
#: "SGD is used as the optimization algorithm with a momentum of 0.9 and a weight decay 1e-4 [...] on
#: CIFAR10/100, the initial rate is 0.01 with a degradation of 10% for every 60 epochs before reaching
#: the maximum epoch of 200." (ResNet-18; WRN: the same learning rate and decay)
CIFAR = PaperRecipe(
    finetune={"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "lr": 0.01, "schedule": "step",
              "lr_decay": 0.9, "lr_decay_every": 60, "epochs": 200, **_CBCN_LOSSES},
    source="section 4.1, WRN and ResNet18 backbones")
#: "The initial learning rate is 0.01 with a degradation of 10% for every 20 epochs before reaching the
#: maximum epoch of 70 on ImageNet" (ResNet-18, SGD as on CIFAR)
IMAGENET = PaperRecipe(finetune=dict(CIFAR.finetune, lr_decay_every=20, epochs=70),
                       source="section 4.1, ResNet18 backbone")


class CBCNMethod(Method):
    """The center loss (section 3.3, Wen et al.'s) is on by default, lambda = 0.01 (the paper gives
    no value)."""

    finetune_defaults = {"center_loss_weight": 0.01}
    paper_recipes = {"mnist": MNIST, "mnist-rot": MNIST, "cifar10": CIFAR, "cifar100": CIFAR,
                     "cifar10-rot": CIFAR, "imagenet": IMAGENET}


register_method(CBCNMethod("cbcn", CBCNConfig, CBCNConv2d, CBCNLinear))
