"""The binarization methods, one module each, registered by name.

Each method module defines a config dataclass (the paper's defaults, documented field by
field), a weight mixin, the ``BinaryConv2d``/``BinaryLinear`` classes built from it, and its
:class:`Method` record. The record is also the method's *training policy*: the hooks below are
everything :func:`binarize.finetune` and :func:`binarize.set_stage` need to know about a method, so
no code outside this package compares method names or probes layer attributes. The defaults are
those of a one-stage method that adds nothing to training (XNOR-Net, Bi-Real Net); a method
overrides what its paper changes. Adding a method means one module here and a
:func:`register_method` call (``tests/test_new_method.py`` does it with a toy method).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Type

from torch import nn

from ..config import ConvertConfig
from ..layers import BinaryConv2d, BinaryLayer, BinaryLinear

if TYPE_CHECKING:  # the trainer imports this package, not the other way round
    import torch.fx as fx

    from ..finetune.config import FinetuneConfig


@dataclass(frozen=True)
class Phase:
    """A span of epochs the trainer runs with its own fresh optimizers and learning-rate schedule
    (BiPer's stages); ``stage`` is the method stage set on the model when the phase starts."""

    name: str
    epochs: int
    lr: float
    stage: Optional[int]


@dataclass
class ParameterGroup:
    """Parameters a method trains with their own optimizer and base learning rate (RBCN's C),
    without weight decay; the trainer keeps them out of the student's optimizer."""

    name: str
    params: List[nn.Parameter]
    lr: float


@dataclass(frozen=True)
class PaperRecipe:
    """A paper's own training recipe for one dataset: values of :class:`~binarize.FinetuneConfig`
    fields (``finetune``) and of the method's convert options (``convert``: RBCN's lambda1), and the
    paper's words they come from (``source``). A field the paper does not give is not named: it keeps
    binarize's default. ``FinetuneConfig.paper(method, dataset)`` builds the config from it."""

    finetune: Mapping[str, Any]
    convert: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


class TrainingPolicy:
    """The training hooks, with the defaults of a one-stage method that adds nothing. A float
    model (no binary layers) is trained with exactly these defaults."""

    #: Training stages of the method's layers (BiPer: 2); ``set_stage`` switches between them.
    stages: ClassVar[int] = 1
    #: Values for :class:`~binarize.FinetuneConfig` fields left at None for this method's students
    #: (RBCN: ``bn_refresh``; CBCN: ``center_loss_weight``); fields not named here fall back to
    #: the config's own "off" value.
    finetune_defaults: ClassVar[Mapping[str, Any]] = {}
    #: The paper's own recipes by dataset name (lower case; datasets sharing a recipe share the
    #: object); empty for a method whose paper binarize does not follow for training.
    paper_recipes: ClassVar[Mapping[str, PaperRecipe]] = {}

    def parameter_groups(self, model: nn.Module, config: "FinetuneConfig") -> List[ParameterGroup]:
        """Parameters trained apart from the rest of the student, each group with its learning rate."""
        return []

    def training_phases(self, model: nn.Module, config: "FinetuneConfig") -> List[Phase]:
        """The phases of a run from ``model``'s current state. With ``config.two_step`` and binary
        layers: stage 1 (binary activations, real-valued weights: ``BinaryLayer.real_weights``) for
        ``stage1_epochs`` (None: as many as ``epochs``) at ``stage1_lr``, then stage 2 (binary weights)
        for ``epochs`` at ``lr``, as Martinez et al. (2020) and ReActNet. Otherwise one phase,
        ``epochs`` at ``lr``."""
        binary = any(isinstance(m, BinaryLayer) for m in model.modules())
        if not (config.two_step and binary):
            if config.stage1_epochs:
                raise ValueError(f"stage1_epochs={config.stage1_epochs} needs a binary student and two_step=True "
                                 f"(or a two-stage method: {', '.join(staged_methods()) or 'none registered'})")
            return [Phase("train", config.epochs, self.binary_lr(config), None)]
        stage1 = config.epochs if config.stage1_epochs is None else config.stage1_epochs
        phases = [Phase("stage 1", stage1, config.stage1_lr, 1)] if stage1 else []
        return phases + [Phase("stage 2", config.epochs, self.binary_lr(config), 2)]

    def binary_lr(self, config: "FinetuneConfig") -> float:
        """The learning rate of the (final) binary stage: ``config.lr``, or when it is None this method's
        ``finetune_defaults["lr"]``, else the fallback (:data:`binarize.finetune.config.FALLBACKS`)."""
        from ..finetune.config import method_defaults

        return method_defaults(config, self)["lr"]

    def current_stage(self, model: nn.Module) -> Optional[int]:
        """The stage ``model``'s layers are in (None: the method has no stages)."""
        return None

    def set_stage(self, model: nn.Module, stage: int) -> None:
        """Switch every layer of ``model`` to ``stage`` (see :func:`binarize.set_stage`)."""
        raise ValueError(f"set_stage: the model has no two-stage layers "
                         f"(only method={' or '.join(repr(n) for n in staged_methods())} has stages)")

    def prepare_phase(self, model: nn.Module, phase: Phase) -> None:
        """Called at the start of every epoch of ``phase`` (also a resumed one): put the model in
        the phase's stage if it is not there yet (here: the two-step schedule's real weights)."""
        for layer in model.modules():
            if isinstance(layer, BinaryLayer):
                layer.real_weights = phase.stage == 1


@dataclass(frozen=True)
class Method(TrainingPolicy):
    """A registered method: its config, its layer classes, and (inherited hooks) its training policy."""

    name: str
    config: Type[ConvertConfig]
    conv: Type[BinaryConv2d]
    linear: Type[BinaryLinear]

    def rewrite_graph(self, gm: "fx.GraphModule", binary: List[str], config: ConvertConfig) -> None:
        """The method's own step of :func:`binarize.convert`, run on the graph after its layers
        (``binary``, module names) are swapped in; by default none (CBCN's layout "widen" widens the
        feature maps around them)."""


METHODS: Dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> Method:
    """Remove a registered method (a plug-in's or a test's); returns its record."""
    return METHODS.pop(get_method(name).name)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}") from None


def method_for_config(config: ConvertConfig) -> Method:
    for method in METHODS.values():
        if type(config) is method.config:
            return method
    raise TypeError(f"{type(config).__name__} is not the config of a registered method "
                    f"({', '.join(m.config.__name__ for m in METHODS.values())})")


def paper_recipe(method: str, dataset: str) -> PaperRecipe:
    """The recipe ``method``'s paper reports for ``dataset``; a clear error names what exists."""
    recipes = get_method(method).paper_recipes
    if not recipes:
        having = sorted(name for name, m in METHODS.items() if m.paper_recipes)
        raise ValueError(f"method {method!r} has no paper recipe; methods with one: {having}")
    try:
        return recipes[dataset.lower()]
    except KeyError:
        raise ValueError(f"dataset={dataset!r}: the {method} paper gives a recipe for "
                         f"{', '.join(sorted(recipes))}") from None


def staged_methods() -> List[str]:
    return [name for name, method in METHODS.items() if method.stages > 1]


def training_policy(model: nn.Module) -> TrainingPolicy:
    """The policy of the method ``model``'s binary layers were made with; the defaults for a
    float model. The layers are asked, not ``model.binarize_config``, so hand-assembled models work."""
    configs = {type(m.config): m.config for m in model.modules() if isinstance(m, BinaryLayer)}
    if not configs:
        return TrainingPolicy()
    if len(configs) > 1:
        raise ValueError(f"the model mixes binary layers of several methods "
                         f"({', '.join(sorted(c.method for c in configs.values()))}); train one method at a time")
    return method_for_config(next(iter(configs.values())))


from . import xnor, bireal, biper, cbcn, rbcn  # noqa: E402,F401  (registers the methods)
