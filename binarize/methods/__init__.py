"""The binarization methods, one module each, registered by name.

Each method module defines a config dataclass (the paper's defaults, documented field by
field), a weight mixin, and the ``BinaryConv2d``/``BinaryLinear`` classes built from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Type

from ..config import ConvertConfig
from ..layers import BinaryConv2d, BinaryLinear


@dataclass(frozen=True)
class Method:
    name: str
    config: Type[ConvertConfig]
    conv: Type[BinaryConv2d]
    linear: Type[BinaryLinear]


METHODS: Dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


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


from . import xnor, bireal, biper, cbcn, rbcn  # noqa: E402,F401  (registers the methods)
