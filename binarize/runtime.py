"""ONNX Runtime sessions with the ``binarize`` custom ops registered."""
from __future__ import annotations

import os
from typing import Iterator, Optional, Union

import onnx
import onnxruntime as ort

from . import opset
from .kernels import library_path

__all__ = ["session", "check_model", "ISA_CONFIG_KEY"]

#: Session config entry the kernel library reads when it is registered with a SessionOptions:
#: the kernel path of that session only (no process-wide state, so concurrent sessions with
#: different paths do not interfere).
ISA_CONFIG_KEY = "binarize.isa"


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, those of its subgraphs (If / Loop / Scan bodies) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _nodes(subgraph)


def check_model(model: onnx.ModelProto, where: str = "the model") -> None:
    """ValueError naming ``where`` when ``model`` imports a ``binarize`` opset version this release
    does not implement, or has a ``binarize`` node with an attribute its operator does not define or
    a number of inputs it does not take (ONNX Runtime lets a custom op see neither attribute names
    nor versions; the kernel library checks everything else)."""
    versions = [entry.version for entry in model.opset_import if entry.domain == opset.DOMAIN]
    if not versions:
        return
    opset.check_opset_version(versions[0], where)
    for node in _nodes(model.graph):
        if node.domain != opset.DOMAIN:
            continue
        try:
            op = opset.definition(node.op_type, versions[0])
        except ValueError as error:
            raise ValueError(f"{where}: node {node.name or node.output[0]!r}: {error}") from None
        unknown = [a.name for a in node.attribute if a.name not in op.attribute_names]
        if unknown:
            raise ValueError(f"{where}: node {node.name or node.output[0]!r} ({op.name} version {op.version}) has "
                             f"unknown attribute(s) {unknown}; its attributes are {list(op.attribute_names)}")
        required = sum(not p.optional for p in op.inputs)
        if not required <= len(node.input) <= len(op.inputs):
            raise ValueError(f"{where}: node {node.name or node.output[0]!r} ({op.name} version {op.version}) has "
                             f"{len(node.input)} inputs; it takes {list(p.name for p in op.inputs)} (the last "
                             f"{len(op.inputs) - required} optional)")


def session(path_or_bytes: Union[str, os.PathLike, bytes], threads: Optional[int] = None,
            isa: Optional[str] = None, **kwargs) -> ort.InferenceSession:
    """An ``InferenceSession`` able to run BinaryConv2d / BinaryLinear.

    ``threads`` sets ``intra_op_num_threads`` (the kernels split their work over that pool);
    ``isa`` forces this session's kernel path (``"avx512"``, ``"avx512bw"``, ``"avx2"``, ``"neon"``,
    ``"scalar"`` or ``"reference"``, see :func:`binarize.kernels.available_isas`); by default the
    ``BINARIZE_ISA`` environment variable decides, or when it is unset the fastest path this CPU
    supports. The model is checked first (:func:`check_model`): an unsupported ``binarize`` opset
    version is a ValueError naming the file.
    Other keyword arguments go to ``InferenceSession`` (``sess_options`` may be given and is
    extended; ``providers`` defaults to the CPU provider).
    """
    model = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
    try:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
    except Exception:  # not a readable ONNX model: ONNX Runtime says why, in its own words, below
        proto = None
    if proto is not None:
        check_model(proto, "the model (bytes)" if isinstance(model, bytes) else model)
    options = kwargs.pop("sess_options", None) or ort.SessionOptions()
    if isa is not None:  # read by the library when it is registered, just below
        options.add_session_config_entry(ISA_CONFIG_KEY, isa)
    options.register_custom_ops_library(library_path())
    if threads is not None:
        options.intra_op_num_threads = threads
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(model, sess_options=options, **kwargs)
