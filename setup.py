"""Build hook: compiles the C++ ONNX Runtime kernels (kernels/) into binarize/libbinarize_ort.so.

All metadata lives in pyproject.toml; this file only adds a CMake-driven ``build_ext``.
It works for ``pip install .`` (the library goes into the wheel's ``binarize/``) and for
``pip install -e .`` / ``python setup.py build_ext --inplace`` (it lands in ``binarize/``).

The ONNX Runtime C API headers come with the source (kernels/third_party/onnxruntime, MIT), or
from $ORT_INCLUDE_DIR when it is set: the build needs no network.

BINARIZE_PORTABLE=1 links the C++ runtime statically and strips the library, for wheels that run
on other machines (manylinux_2_28; see packaging/build_wheels.sh).
"""
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
LIBRARY = "libbinarize_ort.so"


class CMakeExtension(Extension):
    """An extension whose sources are built by CMake rather than by setuptools."""

    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    def get_ext_filename(self, fullname):
        # ORT loads the library by path, not as a Python module: no ABI tag in the name.
        # setuptools calls this with the full dotted name or with its last component only.
        *package, name = fullname.split(".")
        if name == Path(LIBRARY).stem:
            return os.path.join(*package, LIBRARY)
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        if shutil.which("cmake") is None:
            raise RuntimeError("building the binarize kernels needs CMake >= 3.18 (apt-get install cmake, or pip install cmake)")
        build_dir = Path(self.build_temp).resolve() / "kernels"
        build_dir.mkdir(parents=True, exist_ok=True)
        portable = "ON" if os.environ.get("BINARIZE_PORTABLE") == "1" else "OFF"
        # ORT_INCLUDE_DIR, when set, reaches CMake through the environment.
        subprocess.run(["cmake", "-S", str(ext.source_dir), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                        f"-DBINARIZE_PORTABLE={portable}"], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 1)], check=True)
        destination = Path(self.get_ext_fullpath(ext.name)).resolve()
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Copy then rename, so a concurrently running process never loads a half-written library.
        partial = destination.with_suffix(".so.partial")
        shutil.copyfile(build_dir / LIBRARY, partial)
        os.replace(partial, destination)


setup(ext_modules=[CMakeExtension("binarize.libbinarize_ort", ROOT / "kernels")], cmdclass={"build_ext": CMakeBuild})
