"""Location and capabilities of the compiled ONNX Runtime custom-op library (``libbinarize_ort.so``)."""
from __future__ import annotations

import ctypes
import functools
import sys
from pathlib import Path

__all__ = ["library_path", "available_isas", "last_kernel_isa"]

_LIBRARY_NAME = {"win32": "binarize_ort.dll", "darwin": "libbinarize_ort.dylib"}.get(sys.platform, "libbinarize_ort.so")


def library_path() -> str:
    """Absolute path of the custom-op library shipped inside the ``binarize`` package."""
    path = Path(__file__).resolve().parent / _LIBRARY_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the C++ kernels are built with the package. From the repository root run\n"
            f"    pip install --no-build-isolation -e .      (or: python setup.py build_ext --inplace)\n"
            f"which runs CMake on kernels/ (with the ONNX Runtime headers in kernels/third_party/onnxruntime).")
    return str(path)


@functools.lru_cache(maxsize=None)
def available_isas() -> tuple[str, ...]:
    """Kernel paths this CPU can run, fastest first, from ``avx512``, ``avx512bw``, ``avx2``,
    ``neon``, ``scalar``, ``reference``: e.g. ``('avx512', 'avx512bw', 'avx2', 'scalar', 'reference')``
    on x86-64 with AVX-512, ``('neon', 'scalar', 'reference')`` on aarch64."""
    library = ctypes.CDLL(library_path())
    library.binarize_available_isas.restype = ctypes.c_char_p
    return tuple(library.binarize_available_isas().decode().split(","))


def last_kernel_isa() -> str:
    """The kernel path (``"avx512"``, ``"avx512bw"``, ``"avx2"``, ``"neon"``, ``"scalar"``,
    ``"reference"``) of the last BinaryConv2d / BinaryLinear kernel created on the calling thread,
    ``""`` if none was.
    Session creation builds the kernels on the calling thread, so right after
    ``sess = binarize.runtime.session(...)`` this is the path ``sess`` runs (while a session is
    alive: ONNX Runtime unloads the library with the last session that registered it)."""
    library = ctypes.CDLL(library_path())
    library.binarize_last_kernel_isa.restype = ctypes.c_char_p
    return library.binarize_last_kernel_isa().decode()
