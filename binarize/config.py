"""Config dataclasses: the one path to and from plain data (with a format version) that every
config uses, and the conversion options shared by every method (each method's config subclasses
:class:`ConvertConfig`)."""
from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

ACTIVATIONS = ("hardtanh", "prelu", "identity")
#: The new shortcut a shape-changing binary conv gets (binarize.passes): "conv", Bi-Real's AvgPool +
#: float 1x1 conv + BatchNorm; "free", AvgPool + channel repetition or grouped averaging, no weights;
#: "auto", "free" for 1x1 convs and "conv" for larger kernels.
SHORTCUTS = ("auto", "conv", "free")
#: What ``keep_costly_float`` charges a binary layer (binarize.passes.layer_cost): "kernel" the binary
#: kernel and its new shortcut, "shortcut" (version 2-3 recipes) only a new float conv shortcut.
COST_MODELS = ("kernel", "shortcut")


class ConfigVersionError(ValueError):
    """Plain data of a config written in another format version than this binarize reads."""


def _type_name(t: type) -> str:
    return f"{t.__module__}:{t.__qualname__}"


def _plain(value: Any) -> Any:
    if isinstance(value, type):
        return _type_name(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class VersionedConfig:
    """Mixin of every config dataclass: ``version`` (a class constant, raised when the meaning or
    set of fields changes) and the one way to and from plain data (numbers, strings, lists, dicts)
    that checkpoints store. Fields declared with ``metadata={"types": True}`` hold classes, stored
    as ``"module:QualName"`` strings."""

    version: ClassVar[int] = 1
    #: The older versions this class still reads: ``{old: upgrade}``, where ``upgrade(options)``
    #: turns version ``old``'s fields into version ``old + 1``'s (a version that only added fields
    #: needs no conversion: :func:`added_fields` leaves them to take their defaults).
    upgrades: ClassVar[Mapping[int, Callable[[Dict[str, Any]], Dict[str, Any]]]] = {}

    def to_data(self) -> Dict[str, Any]:
        data = {"version": self.version}
        for f in fields(self):
            data[f.name] = _plain(getattr(self, f.name))
        return data

    @classmethod
    def from_data(cls, data: Mapping[str, Any], import_object: Optional[Callable[[str, str], Any]] = None):
        """The config ``to_data`` gave. Data without a ``version`` entry predates versioned configs
        and is read as version 1 (the same fields). Data of an older version listed in ``upgrades`` is
        brought up to this version step by step. ``import_object(spec, field_name)`` turns a stored
        class name back into the class (:mod:`binarize.checkpoint` passes its importer)."""
        options = dict(data)
        version = options.pop("version", 1)
        step = version
        while step != cls.version and step in cls.upgrades:
            options, step = cls.upgrades[step](options), step + 1
        if step != cls.version:
            older = f" (and upgrades version {', '.join(map(str, sorted(cls.upgrades)))})" if cls.upgrades else ""
            raise ConfigVersionError(f"{cls.__name__} data of version {version!r}: this binarize reads "
                                     f"version {cls.version}{older}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigVersionError(f"{cls.__name__} version {version} data has unknown field(s) {unknown}")
        for name, value in options.items():
            if known[name].metadata.get("types") and value is not None:
                if import_object is None:
                    raise ValueError(f"{cls.__name__}.{name} holds classes: from_data needs import_object")
                options[name] = tuple(import_object(v, name) if isinstance(v, str) and ":" in v else v
                                      for v in value)
        return cls(**options)


def added_fields(options: Dict[str, Any]) -> Dict[str, Any]:
    """The upgrade of a version that only added fields: the old data's fields are unchanged and
    the new ones take their defaults (chosen so that they do what the old version did)."""
    return options


def parse_bool(text: str) -> bool:
    """Strict: true/false, yes/no, on/off, 1/0 (any case); anything else is a ValueError, never truthy."""
    value = _BOOLEANS.get(text.strip().lower())
    if value is None:
        raise ValueError(f"expected true or false, not {text!r}")
    return value


parse_bool.__name__ = "bool"  # argparse names the type in its error message
_BOOLEANS = {word: True for word in ("true", "yes", "on", "1")} | {word: False for word in ("false", "no", "off", "0")}


def option(default: Any, help: str, *, cli: bool = True) -> Field:
    """A documented config field: ``help`` is its documentation (docstring, ``--help``) and ``cli``
    whether the command line offers it as ``--name`` (False: it has a dedicated option, or none)."""
    return field(default=default, metadata={"help": help, "cli": cli})


def field_docs(cls: type) -> str:
    """The per-field documentation of a dataclass built with :func:`option`, as docstring lines."""
    lines = []
    for f in fields(cls):
        default = "" if f.default is MISSING else f" (default {f.default!r})"
        lines.append(f"    - ``{f.name}``{default}: {f.metadata['help']}")
    return "\n".join(lines)


@dataclass
class ConvertConfig(VersionedConfig):
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
    - ``shortcut``: the new shortcut a shape-changing binary conv gets when the block has no matching
      downsample branch: ``"conv"`` (Bi-Real: AvgPool + float 1x1 conv + BatchNorm), ``"free"``
      (AvgPool + channel repetition / grouped averaging, no weights; "conv" where neither channel
      count divides the other) or ``"auto"`` (default: "free" for 1x1 convs, whose float shortcut
      would cost as much as the layer, "conv" for larger kernels, as Bi-Real).
    - ``keep_costly_float``: keep in float every layer whose binary version with its new shortcut
      would not be faster than the float layer (:func:`binarize.passes.keep_costly_layers_float`): with
      the default ``cost_model="kernel"``, 1x1 convs of fewer than about 48 input channels and 3x3
      convs of fewer than 16 (:func:`binarize.passes.layer_cost`, fitted to measured kernel times), and
      convs on a globally pooled 1x1 map (squeeze-excitation gates); the plan says which and why.
    - ``cost_model``: ``"kernel"`` (default) or ``"shortcut"``: charge only a new float conv shortcut
      (version 2-3 recipes: only shape-changing 1x1 convs with a float conv shortcut stay float).
    - ``activation``: what replaces a ReLU-like activation in front of a binary layer:
      ``"hardtanh"`` (default), ``"prelu"`` (one learnable slope, 0.25) or ``"identity"``.
      Float layers keep their activations.
    - ``input_threshold``: ReActNet's RSign (default on): every binary layer learns one threshold per
      input channel (``layer.input_threshold``, zeros at first) and binarizes ``x - threshold``;
      exported as the binary op's ``threshold`` input (version 2), applied before the bit packing.
    - ``rprelu``: ReActNet's RPReLU (default off; :class:`binarize.layers.RPReLU`, learnable per-channel
      shifts and slope, the identity at first) after every binary layer's BatchNorm; standard ONNX ops.
      Off by default: over 2 seeds it changed accuracy by +0.1 +- 0.4 pp (the evidence report's
      "xnor -RPReLU" row), while it costs elementwise float work at inference, keeps the double
      skip's Add out of the binary op, and its backward pass took 10-11 % of a ResNet-8 step.
    - ``latent_gain``: each binary layer stores its latent weight divided by this and multiplies it
      back in the forward pass, passing the gradient through unscaled (:attr:`BinaryLayer.latent_weight
      <binarize.layers.BinaryLayer.latent_weight>`): whatever first-order optimizer trains the model
      (Adam, SGD) then moves latent weights ``latent_gain`` times as far per step as it moves float
      weights, which a binary network needs to re-learn its signs in a few epochs. Default 8 (a
      power of two: the stored weights times 8 are the float weights bit for bit; xnor's default is
      1), 1 turns it off. In a user's own Adam loop it lowered bireal, biper, CBCN and RBCN's test
      error after a BatchNorm refresh by 1.5-6.1 pp (3 seeds; benchmarks/RESULTS.md, "Latent
      gain"). :func:`binarize.finetune` divides the latent weights' learning rate by it (and
      multiplies their weight decay by it), so its recipes train exactly as with ``latent_gain=1``.
    - ``batchnorm_refresh_samples``: the converted model keeps references to its inputs from its
      last training calls (at least this many samples) and, before its next eval-mode call or
      ``state_dict()``, recomputes every BatchNorm's running statistics from them with the current
      weights (:mod:`binarize.batchnorm`). Latent weights that keep flipping make PyTorch's running
      averages describe weights the model no longer has: in a user's own Adam loop the test error
      as the loop left the model was 24-64 % (mean of 3 seeds per method), and 13-22 % with this
      (benchmarks/RESULTS.md, "BatchNorm statistics at eval()"). Default 512; 0 turns it off
      (PyTorch's running averages). :func:`binarize.finetune` pauses it and keeps its own
      BatchNorm policy.
    - ``leaf_modules``: module names or types that torch.fx must not trace into (for parts of
      a model that are not traceable). Convolutions inside a leaf stay in float.
    """

    keep_first: bool = True
    keep_last: bool = True
    keep_downsample: bool = True
    binarize_linear: bool = False
    exclude: Sequence[str] = ()
    exclude_types: Tuple[type, ...] = field(default=(), metadata={"types": True})
    double_skip: bool = True
    shortcut: str = "auto"
    keep_costly_float: bool = True
    cost_model: str = "kernel"
    activation: str = "hardtanh"
    input_threshold: bool = True
    rprelu: bool = False
    latent_gain: float = 8.0
    batchnorm_refresh_samples: int = 512
    leaf_modules: Sequence[Union[str, type]] = field(default=(), metadata={"types": True})
    # Estimator names from binarize.quantizers.ESTIMATORS; each method sets its paper's choice.
    activation_estimator: str = "ste"
    weight_estimator: str = "ste"

    method = "base"  # class attribute, set by each method's config
    # 2: shortcut and keep_costly_float; 3: input_threshold (on by default) and rprelu; 4: cost_model;
    # 5: latent_gain; 6: batchnorm_refresh_samples. Older plain data rebuilds the model it described.
    version = 6
    upgrades = {1: lambda fields: dict(fields, shortcut="conv", keep_costly_float=False),
                2: lambda fields: {"input_threshold": False, "rprelu": False, **fields},
                3: lambda fields: {"cost_model": "shortcut", **fields},
                4: lambda fields: {"latent_gain": 1.0, **fields},
                5: lambda fields: {"batchnorm_refresh_samples": 0, **fields}}

    def __post_init__(self):
        from .quantizers import ESTIMATORS

        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {ACTIVATIONS}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={self.shortcut!r}: expected one of {SHORTCUTS}")
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"cost_model={self.cost_model!r}: expected one of {COST_MODELS}")
        if not (isinstance(self.latent_gain, (int, float)) and not isinstance(self.latent_gain, bool)
                and 0 < self.latent_gain < float("inf")):
            raise ValueError(f"latent_gain={self.latent_gain!r}: expected a positive finite number (1 turns it off)")
        if not (isinstance(self.batchnorm_refresh_samples, int) and not isinstance(self.batchnorm_refresh_samples, bool)
                and self.batchnorm_refresh_samples >= 0):
            raise ValueError(f"batchnorm_refresh_samples={self.batchnorm_refresh_samples!r}: expected a "
                             f"non-negative whole number of samples (0 turns it off)")
        for name in ("activation_estimator", "weight_estimator"):
            value = getattr(self, name)
            if value not in ESTIMATORS:
                raise ValueError(f"{name}={value!r}: expected one of {sorted(ESTIMATORS)}")
        # tuples, also when plain data's lists come back
        self.exclude = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        self.exclude_types = (self.exclude_types,) if isinstance(self.exclude_types, type) else tuple(self.exclude_types)
        self.leaf_modules = tuple(self.leaf_modules)
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

