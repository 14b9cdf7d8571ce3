"""``binarize.converters``: export a binary model to ONNX with the ``binarize`` custom-op domain.

This directory sits at the repository root and installs as the subpackage ``binarize.converters``
(pyproject.toml's package-dir); :func:`binarize.export` is the public entry point.
"""
from .export import DEFAULT_OPSET, MAX_IR_VERSION, export, prepare, to_onnx
from .schemas import DOMAIN, VERSION, register_schemas

__all__ = ["export", "to_onnx", "prepare", "register_schemas", "DOMAIN", "VERSION", "DEFAULT_OPSET",
           "MAX_IR_VERSION"]
