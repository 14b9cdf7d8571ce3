"""Conversion options shared by every method; each method's config subclasses :class:`ConvertConfig`."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence, Tuple, Union

from torch import nn

ACTIVATIONS = ("hardtanh", "prelu", "identity")


@dataclass
class ConvertConfig:
    """Which layers become binary and how the graph around them is rewritten.

    Fields (all overridable as keyword arguments of :func:`binarize.convert`):

    - ``keep_first``: keep the network's first convolution in float (it sees raw pixels).
    - ``keep_last``: keep the last Linear/Conv2d (the classifier) in float.
    - ``keep_downsample``: keep 1x1 convolutions on a shortcut branch (ResNet downsample) in float.
    - ``binarize_linear``: also binarize ``nn.Linear`` layers (except the last when ``keep_last``).
    - ``exclude``: module names kept in float; an entry ``"re:<pattern>"`` is a regular
      expression matched (``re.fullmatch``) against the qualified module name.
    - ``exclude_types``: module types kept in float (``isinstance`` check).
    - ``double_skip``: add a Bi-Real shortcut around every binary layer (and its BatchNorm).
    - ``activation``: what replaces a ReLU-like activation in front of a binary layer:
      ``"hardtanh"`` (default), ``"prelu"`` (one learnable slope, 0.25) or ``"identity"``.
      Float layers keep their activations.
    - ``leaf_modules``: module names or types that torch.fx must not trace into (for parts of
      a model that are not traceable). Convolutions inside a leaf stay in float.
    """

    keep_first: bool = True
    keep_last: bool = True
    keep_downsample: bool = True
    binarize_linear: bool = False
    exclude: Sequence[str] = ()
    exclude_types: Tuple[type, ...] = ()
    double_skip: bool = True
    activation: str = "hardtanh"
    leaf_modules: Sequence[Union[str, type]] = ()
    # Estimator names from binarize.quantizers.ESTIMATORS; each method sets its paper's choice.
    activation_estimator: str = "ste"
    weight_estimator: str = "ste"

    method = "base"  # class attribute, set by each method's config

    def __post_init__(self):
        from .quantizers import ESTIMATORS

        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {ACTIVATIONS}")
        for name in ("activation_estimator", "weight_estimator"):
            value = getattr(self, name)
            if value not in ESTIMATORS:
                raise ValueError(f"{name}={value!r}: expected one of {sorted(ESTIMATORS)}")
        if isinstance(self.exclude, str):
            self.exclude = (self.exclude,)
        if isinstance(self.exclude_types, type):
            self.exclude_types = (self.exclude_types,)
        for t in self.exclude_types:
            if not (isinstance(t, type) and issubclass(t, nn.Module)):
                raise TypeError(f"exclude_types entry {t!r} is not an nn.Module subclass")

    def estimator_kwargs(self, name: str) -> dict:
        """Parameters a method passes to the estimator ``name`` (CBCN's Gaussian A and sigma)."""
        return {}

    def with_overrides(self, **overrides) -> "ConvertConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no option(s) {unknown}; "
                            f"known options: {sorted(known)}")
        return replace(self, **overrides)

