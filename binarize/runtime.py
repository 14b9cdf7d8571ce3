"""ONNX Runtime sessions with the ``binarize`` custom ops registered."""
from __future__ import annotations

import os
import threading
from typing import Optional, Union

import onnxruntime as ort

from .kernels import library_path

__all__ = ["session"]

# The kernels read BINARIZE_ISA while the session is created; the lock keeps concurrent
# session creations in this process from seeing each other's setting.
_ISA_LOCK = threading.Lock()


def session(path_or_bytes: Union[str, os.PathLike, bytes], threads: Optional[int] = None,
            isa: Optional[str] = None, **kwargs) -> ort.InferenceSession:
    """An ``InferenceSession`` able to run BinaryConv2d / BinaryLinear.

    ``threads`` sets ``intra_op_num_threads`` (the kernels split their work over that pool);
    ``isa`` forces a kernel path (``"avx512"``, ``"avx2"``, ``"neon"``, ``"scalar"`` or ``"reference"``, see
    :func:`binarize.kernels.available_isas`); by default the ``BINARIZE_ISA`` environment variable
    decides, or when it is unset the fastest path this CPU supports.
    Other keyword arguments go to ``InferenceSession`` (``sess_options`` may be given and is
    extended; ``providers`` defaults to the CPU provider).
    """
    options = kwargs.pop("sess_options", None) or ort.SessionOptions()
    options.register_custom_ops_library(library_path())
    if threads is not None:
        options.intra_op_num_threads = threads
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    model = os.fspath(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes
    if isa is None:
        return ort.InferenceSession(model, sess_options=options, **kwargs)
    with _ISA_LOCK:
        previous = os.environ.get("BINARIZE_ISA")
        os.environ["BINARIZE_ISA"] = isa
        try:
            return ort.InferenceSession(model, sess_options=options, **kwargs)
        finally:
            if previous is None:
                del os.environ["BINARIZE_ISA"]
            else:
                os.environ["BINARIZE_ISA"] = previous
