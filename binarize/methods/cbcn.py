"""CBCN: circulant binary convolutional networks (Liu et al., CVPR 2019).

Circulant filters (eqs. 1-2, figs. 3-4): each learned 3x3 filter ``W_i`` yields K orientations
``G_ij = W_i o m_j``, j = 0..K-1, by shifting its 8 outer-ring weights counter-clockwise by
``j * 8/K`` positions (45 degrees per position) with the centre fixed; ``m_0`` is the learned
filter itself. A shift by 2 positions is exactly a 90-degree rotation, so for other square
kernel sizes K in {1, 2, 4} uses ``torch.rot90``; K = 8 needs the 3x3 ring and other kernels raise.

CBConv (eqs. 3-6, figs. 4-5) comes in two layouts (``layout``):

- ``"widen"``, the paper's: "a feature map is defined as 3D with K channels" (fig. 4). Every feature
  map between the first and the last binary layer carries K orientation channels per channel
  (orientation-major: channel ``j * C + c`` is orientation j of channel c); the input of the first
  binary layer is replicated K times (section 3.2, "every channel of the network input is replicated
  as a group of four elements"); a C_in -> C_out layer convolves its K * C_in input channels with
  K * C_out binary CiFs of K * C_in x H x H each (eq. 5: ``F_{h,j} = sum_{i,g} F_g * G_ij``, the
  learned filter copied over the K input channels and rotated by m_j), so it performs K^2 the binary
  MACs of the plain layer. BatchNorms, biases and shortcuts are K channels wide
  (:func:`binarize.orientations.widen_orientations`), and the orientations are pooled (a max) only
  before the classifier: the paper does not say how it pools them; binarize takes the max over
  orientations, as Gabor and oriented response networks do.
- ``"max"``: the pretrained network's interface is kept: a C_in -> C_out conv computes its K * C_out
  responses on the plain C_in-channel input and keeps, per output channel and position, the
  strongest orientation (a max over j, rotation pooling after every layer). Binary MACs and the
  conv's transient output grow K times, the feature maps and BatchNorms stay as in the float model.
  This is not the paper's network (its trends in tables 2-3 are not expected to carry over).

In both, parameters stay those of the float conv (one learned filter per output channel, and
XNOR's per-channel scale ``mean|W_i|``, shared by the K copies, so the max commutes with it); the
widened layer's bias (if any) is K * C_out wide, like the BatchNorm after it. The packed weights of
the exported model hold the K (max) or K^2 (widen) copies of each filter.

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
from typing import Optional

import torch
from torch import nn

from ..config import ConvertConfig
from ..layers import BinaryConv2d, BinaryLinear, mean_abs_per_channel, per_channel
from ..orientations import widen_orientations
from ..quantizers import binary_sign
from . import Method, PaperRecipe, register_method
from .xnor import XnorWeights

LAYOUTS = ("widen", "max")
LAYOUT_DEFAULT = "max"

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
    - ``layout``: "widen" (the paper's K-channel feature maps) or "max" (a max over orientations after
      every layer, the float model's feature maps); see the module docstring.
    """

    orientations: int = 4
    layout: str = LAYOUT_DEFAULT
    gaussian_amplitude: float = 3 * math.sqrt(2 * math.pi)
    gaussian_sigma: float = 1.0
    activation_estimator: str = "approx_sign"
    weight_estimator: str = "gaussian"
    method = "cbcn"
    # 3 (with ConvertConfig's 3: input_threshold, rprelu): layout; version 1 and 2 data described the
    # max-over-orientations layers.
    version = ConvertConfig.version
    upgrades = {**ConvertConfig.upgrades, 2: lambda fields: dict(ConvertConfig.upgrades[2](fields), layout="max")}

    def __post_init__(self):
        super().__post_init__()
        if self.orientations not in (1, 2, 4, 8):
            raise ValueError(f"orientations={self.orientations!r}: expected 1, 2, 4 or 8")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: expected one of {LAYOUTS}")

    def estimator_kwargs(self, name):
        if name == "gaussian":
            return {"amplitude": self.gaussian_amplitude, "sigma": self.gaussian_sigma}
        return {}


class CBCNConv2d(BinaryConv2d):
    """A CBConv. ``rotations`` is K; the :class:`~binarize.layers.BinaryLayer` contract's
    ``orientations`` (packed outputs max-reduced per output channel) is K for layout "max" and 1 for
    "widen", whose ``feature_orientations`` is K instead: ``in_channels`` and ``out_channels`` count
    the K-wide feature maps it reads and writes, ``weight`` holds the C_out x C_in learned filters."""

    def _init_method_state(self):
        k = self.config.orientations
        kh, kw = self.kernel_size
        if kh != kw:
            raise ValueError(f"CBCN rotates square kernels only; this conv has kernel {self.kernel_size}")
        if k == 8 and (kh, kw) != (3, 3):
            raise ValueError(f"CBCN with orientations=8 needs 3x3 kernels (45-degree ring shifts); "
                             f"this conv has kernel {self.kernel_size}: use orientations <= 4 or exclude it")
        self.rotations = k
        if self.config.layout == "widen":
            self.in_channels, self.out_channels = k * self.in_channels, k * self.out_channels
            self.feature_orientations = k
            if self.bias is not None:  # per output channel, like the K-wide BatchNorm after it
                self.bias = nn.Parameter(self.bias.detach().repeat(k))
        else:
            self.orientations = k
        perms = torch.stack([ring_permutation(j * 8 // k) for j in range(k)]) if (kh, kw) == (3, 3) else None
        self.register_buffer("ring_perms", perms, persistent=False)

    def circulant_filters(self, w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """G (eq. 2) of the latent weight ``w`` (default ``self.latent_weight``), orientation-major:
        rows ``j * C_out + i`` hold ``W_i o m_j``."""
        w, k = self.latent_weight if w is None else w, self.rotations
        if self.ring_perms is not None:
            flat = w.flatten(2)
            copies = [flat[:, :, perm].view_as(w) for perm in self.ring_perms]
        else:
            copies = [torch.rot90(w, j * 4 // k, dims=(2, 3)) for j in range(k)]
        return torch.cat(copies, 0)

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        return mean_abs_per_channel(w).repeat(self.rotations)

    def binarized_weight(self):
        w = self.latent_weight
        g = self.circulant_filters(w)
        return per_channel(self._scale(w), g) * self.weight_estimator(g)

    def export_weight(self):
        w = self.latent_weight.detach()
        signs = binary_sign(self.circulant_filters(w))
        if self.feature_orientations > 1:  # the CiF: each filter copied over the K input orientations
            signs = signs.repeat(1, self.feature_orientations, 1, 1)
        return signs, self._scale(w)

    def forward(self, x):
        x = self.binarize_input(x)
        if self.feature_orientations > 1:
            # The K input orientations of a channel meet the same filter copy (fig. 4a), so convolving
            # their sum with the K * C_out circulant filters equals the K^2-wide binary conv the
            # exported model runs, with K times fewer float MACs in training.
            x = x.unflatten(1, (self.feature_orientations, -1)).sum(1)
            return self.conv(x, self.binarized_weight(), self.bias)
        y = self.conv(x, self.binarized_weight(), None)
        n, _, h, w = y.shape
        y = y.view(n, self.rotations, self.out_channels, h, w).amax(1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self):
        return f"{super().extra_repr()}, orientations={self.rotations}, layout={self.config.layout}"


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
    no value). Layout "widen" widens the graph around the layers to K orientation channels."""

    def rewrite_graph(self, gm, binary, config):
        if config.layout == "widen" and config.orientations > 1:  # K = 1: both layouts are the same network
            widen_orientations(gm, binary, config.orientations)

    finetune_defaults = {"center_loss_weight": 0.01}
    paper_recipes = {"mnist": MNIST, "mnist-rot": MNIST, "cifar10": CIFAR, "cifar100": CIFAR,
                     "cifar10-rot": CIFAR, "imagenet": IMAGENET}


register_method(CBCNMethod("cbcn", CBCNConfig, CBCNConv2d, CBCNLinear))
