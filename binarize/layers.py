"""Binary layers: the shared skeleton that every method fills in.

A binary layer keeps the float *latent* weight (initialised from the pretrained layer) as
:attr:`BinaryLayer.latent_weight`, stored in the parameter ``weight`` divided by
``config.latent_gain`` (the gain speeds up any optimizer on the latent weights, see there), takes
a float input, binarizes it inside with the method's activation estimator
(sign(0) = +1, see :mod:`binarize.quantizers`) and convolves it with the method's binarized,
scaled weight. Padding is applied by ``F.conv2d`` *after* the input is binarized, so padded
taps are 0 and contribute nothing to the dot product; the exported kernel reproduces exactly
that (see ``kernels/SPEC.md``).

A method supplies a mixin with three hooks:

- ``_init_method_state()``: create the method's parameters/buffers from the copied weights;
- ``binarized_weight()``: the weight used in the forward pass (differentiable to the latent one);
- ``export_weight()``: ``(signs, multiplier)`` with signs in {-1, +1} shaped like the weight the
  runtime convolves with and one float per output channel of it, such that in eval mode
  ``forward(x) == reduce(conv(sign(x), signs * multiplier)) + bias``; ``reduce`` is the identity
  except for layers with ``orientations > 1`` (CBCN's layout "max"), where it is a max over orientations.

A layer with ``feature_orientations = K > 1`` (CBCN's layout "widen") reads and writes feature maps
that carry K orientation channels per channel; its ``in_channels``/``out_channels`` count them.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConvertConfig
from .quantizers import get_estimator


def per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape one value per output channel so it broadcasts against a weight tensor ``like``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def mean_abs_per_channel(w: torch.Tensor) -> torch.Tensor:
    """mean |w| over everything but the output-channel axis (XNOR-Net's alpha), shape (out,)."""
    return w.abs().flatten(1).mean(1)


class _StraightThroughGain(torch.autograd.Function):
    """``gain * stored`` forward; backward passes the gradient to ``stored`` unscaled."""

    @staticmethod
    def forward(ctx, stored: torch.Tensor, gain: float) -> torch.Tensor:
        return stored * gain

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class BinaryLayer:
    """Behaviour shared by :class:`BinaryConv2d` and :class:`BinaryLinear`."""

    config: ConvertConfig
    #: Packed output channels per logical output channel (CBCN's K); the runtime takes a max over them.
    orientations: int = 1
    #: ReActNet's RSign: one learnable threshold per input channel / feature, subtracted before the
    #: sign (``config.input_threshold``), or None: the sign is taken at 0. Exported as BinaryConv2d /
    #: BinaryLinear v2's ``threshold``. Registered as a parameter that may be None
    #: (:meth:`_init_input_threshold`) rather than a class attribute: torch refuses
    #: ``layer.input_threshold = nn.Parameter(...)`` over a class attribute of that name.
    input_threshold: Optional[nn.Parameter]
    #: Orientation channels per channel of the feature maps the layer reads and writes (CBCN's K in
    #: layout "widen"): the graph around it is K-wide (binarize.orientations).
    feature_orientations: int = 1
    #: Stage 1 of the two-step schedule (``FinetuneConfig.two_step``): binary activations with the
    #: real-valued latent weights; the trainer sets it (plain attribute, not saved: each epoch's start
    #: sets it again, also on resume). The weight estimator is then the identity, so every method's
    #: scaling (and CBCN's circulant copies) applies unchanged to the real weights.
    real_weights: bool = False

    @property
    def latent_gain(self) -> float:
        return float(self.config.latent_gain)

    @property
    def latent_weight(self) -> torch.Tensor:
        """The latent weight every method binarizes: ``latent_gain * weight``, differentiable to the
        parameter ``weight`` with the gradient passed through unscaled. An optimizer's step on
        ``weight`` is then a step ``latent_gain`` times larger on the latent weight, for SGD
        (``lr * grad``) and Adam (whose step does not depend on the gradient's scale) alike, while
        float layers keep their steps: a binary network re-learns its signs in a few epochs of a
        user's own loop. ``weight.grad`` is the gradient with respect to the latent weight."""
        gain = self.latent_gain
        return self.weight if gain == 1.0 else _StraightThroughGain.apply(self.weight, gain)

    def _init_method_state(self) -> None:  # pragma: no cover - every method overrides
        raise NotImplementedError

    def binarized_weight(self) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def export_weight(self) -> Tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def extra_losses(self) -> Dict[str, torch.Tensor]:
        """Loss terms this layer adds to the training objective (RBCN's kernel loss)."""
        return {}

    def binarize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The binary input: the method's estimator of ``x - input_threshold``, the threshold broadcast
        over the input's channel axis (``threshold_view``)."""
        threshold = self.input_threshold
        if threshold is not None:
            x = x - threshold.reshape(self.threshold_view(x.dim()))
        name = self.config.activation_estimator
        return get_estimator(name)(x, **self.config.estimator_kwargs(name))

    def threshold_view(self, dims: int) -> Tuple[int, ...]:
        """The shape the threshold takes against a ``dims``-dimensional input: the channel axis is 1 for
        a convolution's (N, C, H, W) input, the last one for a Linear's (N, ..., C)."""
        return (-1,) + (1,) * (dims - 2) if isinstance(self, nn.Conv2d) else (-1,)

    def _init_input_threshold(self, channels: int) -> None:
        threshold = None
        if self.config.input_threshold:
            threshold = nn.Parameter(torch.zeros(channels, dtype=self.weight.dtype, device=self.weight.device))
        self.register_parameter("input_threshold", threshold)

    def weight_estimator(self, w: torch.Tensor, **params) -> torch.Tensor:
        if self.real_weights:
            return w
        name = self.config.weight_estimator
        return get_estimator(name)(w, **self.config.estimator_kwargs(name), **params)

    def _copy_from(self, layer: nn.Module) -> None:
        with torch.no_grad():
            self.weight.copy_(layer.weight / self.latent_gain)
            if layer.bias is not None:
                self.bias.copy_(layer.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, method={self.config.method}"


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """A Conv2d with binary weights and binary (internally binarized) input."""

    def __init__(self, conv: nn.Conv2d, config: ConvertConfig):
        nn.Conv2d.__init__(
            self, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            conv.padding, conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype)
        self.config = config
        self._copy_from(conv)
        self._init_method_state()
        self._init_input_threshold(self.in_channels)  # after the method state: CBCN's widen makes it K-wide

    def conv(self, x_binary: torch.Tensor, weight: torch.Tensor,
             bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv2d(x_binary, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.binarize_input(x), self.binarized_weight(), self.bias)


class BinaryLinear(BinaryLayer, nn.Linear):
    """A Linear layer with binary weights and binary (internally binarized) input."""

    def __init__(self, linear: nn.Linear, config: ConvertConfig):
        nn.Linear.__init__(self, linear.in_features, linear.out_features, linear.bias is not None,
                           device=linear.weight.device, dtype=linear.weight.dtype)
        self.config = config
        self._copy_from(linear)
        self._init_method_state()
        self._init_input_threshold(self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.binarize_input(x), self.binarized_weight(), self.bias)


class RPReLU(nn.Module):
    """ReActNet's RPReLU, put after a binary conv's BatchNorm (``config.rprelu``): per channel c,
    ``y = PReLU_c(x - shift_in_c) + shift_out_c``. It starts as the identity (slopes 1, shifts 0), so
    conversion does not change what the network computes; training learns where each channel bends.
    Standard ONNX ops (Sub, PRelu, Add)."""

    def __init__(self, channels: int, channel_axis: int = 1):
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.ones(channels))
        self.shift_out = nn.Parameter(torch.zeros(channels))
        #: 1 after a convolution (N, C, H, W); -1 after a Linear (N, ..., C)
        self.channel_axis = channel_axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = self.channel_axis != 1 and x.dim() > 2  # PReLU's slopes act on dim 1
        if moved:
            x = x.movedim(-1, 1)
        shape = (-1, *([1] * (x.dim() - 2)))
        y = F.prelu(x - self.shift_in.reshape(shape), self.slope) + self.shift_out.reshape(shape)
        return y.movedim(1, -1) if moved else y

    def extra_repr(self) -> str:
        return f"{self.slope.numel()}"
