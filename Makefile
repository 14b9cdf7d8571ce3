# Two commands on a fresh machine: `make demo` (the end-to-end demo) and `make test` (the tests).
# Each creates the virtual environment, installs the pinned dependencies, builds the package
# (including the C++ kernel library) and then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet

DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.package-built

.PHONY: demo test test-aarch64 wheels bench clean

$(DEPS): constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --constraint constraints.txt "setuptools>=77" wheel \
		torch torchvision onnx onnxruntime onnxscript numpy tqdm pytest hypothesis
	touch $@

$(BUILT): $(DEPS) pyproject.toml $(wildcard setup.py) $(wildcard kernels/*) $(wildcard kernels/*/*)
	$(PIP) install --no-build-isolation --no-deps --editable .
	touch $@

demo: $(BUILT)
	$(PY) examples/demo.py

test: $(BUILT)
	$(PY) -m pytest -q tests

# The aarch64 build of the kernels and the C++ runner, tested under qemu (kernels/aarch64/test.sh;
# installs its cross toolchain on first use, skips with the reason when it cannot).
test-aarch64: $(BUILT)
	sh kernels/aarch64/test.sh $(PY)

# dist/: the sdist and manylinux_2_28 wheels for x86_64 and aarch64 (packaging/build_wheels.sh).
wheels: $(DEPS)
	sh packaging/build_wheels.sh $(PY)

bench: $(BUILT)
	$(PY) benchmarks/bench_kernels.py

clean:
	rm -rf $(VENV) build dist .cache *.egg-info binarize/*.so
