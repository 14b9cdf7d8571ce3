"""The C++ example runner (examples/cpp) and the aarch64 build of the kernels.

Host (x86-64, or whatever this machine is): binarize_run is built with CMake against the
onnxruntime wheel's own libonnxruntime and must reproduce binarize.runtime bit for bit.

aarch64: kernels/aarch64/test.sh cross-builds libbinarize_ort.so and binarize_run, then runs
this module with BINARIZE_AARCH64_BUILD (the folder holding both and libonnxruntime.so.1) and
BINARIZE_AARCH64_EMULATOR (the qemu-aarch64 command line) set; models and expected values are made
here, on the host, by PyTorch. Without those variables the aarch64 tests are skipped.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import binarize
from binarize.kernels import available_isas, library_path
from test_export import CifarResNet, trained_batchnorms
from test_kernels import CONV_CASES, conv_model, make_model, random_input, random_signs, torch_conv

ROOT = Path(__file__).resolve().parents[1]
AARCH64_BUILD = os.environ.get("BINARIZE_AARCH64_BUILD")
AARCH64_EMULATOR = shlex.split(os.environ.get("BINARIZE_AARCH64_EMULATOR", ""))
needs_aarch64 = pytest.mark.skipif(not AARCH64_BUILD, reason="aarch64 build not given: run kernels/aarch64/test.sh "
                                                              "(make test-aarch64)")


class Runner:
    """binarize_run on one target: ``command`` prefix (an emulator or nothing) and its op library."""

    def __init__(self, command: list[str], ops_library: str):
        self.command, self.ops_library = command, ops_library

    def run(self, jobs: list[tuple[Path, Path, Path]], isa: str | None = None, threads: int = 2):
        """Runs every (model, input.npy, output.npy) job in one process; returns the CompletedProcess."""
        env = {k: v for k, v in os.environ.items() if k != "BINARIZE_ISA"}
        if isa is not None:
            env["BINARIZE_ISA"] = isa
        arguments = [str(part) for job in jobs for part in job]
        return subprocess.run(self.command + ["--ops", self.ops_library, "--threads", str(threads), *arguments],
                              env=env, capture_output=True, text=True, timeout=600)

    def outputs(self, jobs, isa=None) -> list[np.ndarray]:
        result = self.run(jobs, isa)
        assert result.returncode == 0, f"binarize_run failed ({isa}):\n{result.stdout}\n{result.stderr}"
        return [np.load(output) for _, _, output in jobs]


@pytest.fixture(scope="module")
def host_runner() -> Runner:
    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build examples/cpp (it also builds the package)", pytrace=False)
    ort_library = next((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    build = ROOT / "build" / "cpp-example-host"
    subprocess.run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", build, f"-DORT_LIBRARY={ort_library}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", build], check=True, capture_output=True)
    return Runner([str(build / "binarize_run")], library_path())


@pytest.fixture(scope="module")
def aarch64_runner() -> Runner:
    build = Path(AARCH64_BUILD)
    return Runner(AARCH64_EMULATOR + [str(build / "binarize_run")], str(build / "libbinarize_ort.so"))


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    """A binarized CIFAR ResNet (BinaryConv2d, BinaryLinear, float stem/shortcuts, PReLU) as ONNX, its
    input, and binarize.runtime's output for it on this machine."""
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    bnn = binarize.convert(trained_batchnorms(CifarResNet(), torch.Generator().manual_seed(0)), "xnor",
                           binarize_linear=True, activation="prelu").eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    binarize.export(bnn, folder / "model.onnx", x)
    np.save(folder / "input.npy", x.numpy())
    sess = binarize.runtime.session(str(folder / "model.onnx"), threads=1)
    expected = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return folder, expected


def test_cpp_runner_reproduces_python_runtime(host_runner, exported_model):
    folder, expected = exported_model
    job = (folder / "model.onnx", folder / "input.npy", folder / "host.npy")
    result = host_runner.run([job], threads=1)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(job[2]), expected)  # same libraries, same thread count
    assert f"argmax per row: {' '.join(map(str, expected.argmax(1)))}" in result.stdout
    assert f"binarize kernel paths (fastest first): {','.join(available_isas())}\n" in result.stdout


def test_cpp_runner_reports_bad_input_and_exits_nonzero(host_runner, exported_model, tmp_path):
    folder, _ = exported_model
    np.save(tmp_path / "int.npy", np.zeros((4, 3, 32, 32), np.int32))
    result = host_runner.run([(folder / "model.onnx", tmp_path / "int.npy", tmp_path / "out.npy")])
    assert result.returncode == 1
    assert "int.npy: dtype must be little-endian float32" in result.stderr
    result = host_runner.run([(tmp_path / "missing.onnx", folder / "input.npy", tmp_path / "out.npy")])
    assert result.returncode == 1 and "missing.onnx" in result.stderr


@needs_aarch64
def test_aarch64_runner_matches_host_runtime(aarch64_runner, exported_model):
    """Float layers run in ONNX Runtime's ARM code (another summation order), so up to float
    rounding; the binary layers are exact (test below), and every prediction is the same."""
    folder, expected = exported_model
    [y] = aarch64_runner.outputs([(folder / "model.onnx", folder / "input.npy", folder / "aarch64.npy")])
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(y.argmax(1), expected.argmax(1))


def with_nan_and_signed_zeros(rng, x: np.ndarray) -> np.ndarray:
    """The spec's sign at its edges: NaN -> -1, -0.0 and +0.0 -> +1 (random_input has +0.0 already;
    the references' x >= 0 gives exactly that)."""
    x = x.copy()
    x[rng.random(x.shape) < 0.03] = np.nan
    x[rng.random(x.shape) < 0.05] = -0.0
    return x


LINEAR_CASES = [(3, (1,)), (64, (4,)), (65, (2, 3)), (300, (5,)), (1024, (2,))]


def conv_problems():
    """(x, ±1 weights, (stride, pads, dilation)) for every conv shape the x86 paths are tested on,
    plus the popcount worst case: every weight -1 against non-negative inputs, so every xor word is
    all ones for 36 reduction steps (256 channels, 3x3) -- byte counters that are not flushed in time
    overflow here, and nowhere with random signs."""
    for i, (n, c, h, w, m, k, stride, pads, dilation) in enumerate(CONV_CASES):
        rng = np.random.default_rng(i)
        yield (with_nan_and_signed_zeros(rng, random_input(rng, (n, c, h, w))), random_signs(rng, (m, c, k, k)),
               ((stride, stride), pads, (dilation, dilation)))
    x = np.abs(random_input(np.random.default_rng(50), (1, 256, 6, 5)))
    yield x, -np.ones((16, 256, 3, 3), np.float32), ((1, 1), (1, 1, 1, 1), (1, 1))
    yield -x - 1, -np.ones((16, 256, 3, 3), np.float32), ((1, 1), (0, 0, 0, 0), (1, 1))


def kernel_jobs(folder: Path):
    """Every conv problem (integer and scaled) and the linear shapes of test_kernels as runner jobs
    with their expected outputs: (jobs, expected, exact?)."""
    jobs, expected, exact = [], [], []

    def add(stem: str, model: bytes, x: np.ndarray, want: np.ndarray, is_exact: bool):
        (folder / f"{stem}.onnx").write_bytes(model)
        np.save(folder / f"{stem}.npy", x)
        jobs.append((folder / f"{stem}.onnx", folder / f"{stem}.npy", folder / f"{stem}.out.npy"))
        expected.append(want)
        exact.append(is_exact)

    for i, (x, w_signs, geometry) in enumerate(conv_problems()):
        m = w_signs.shape[0]
        rng = np.random.default_rng(1000 + i)
        ones, zeros = np.ones(m, np.float32), np.zeros(m, np.float32)
        multiplier, bias = rng.uniform(0.01, 2.0, m).astype(np.float32), rng.standard_normal(m).astype(np.float32)
        add(f"conv{i}d", conv_model(x.shape, w_signs, ones, zeros, *geometry), x,
            torch_conv(x, w_signs, ones, zeros, *geometry), True)
        add(f"conv{i}y", conv_model(x.shape, w_signs, multiplier, bias, *geometry), x,
            torch_conv(x, w_signs, multiplier, bias, *geometry), False)
    for i, (features, rows) in enumerate(LINEAR_CASES):
        rng = np.random.default_rng(100 + i)
        x = with_nan_and_signed_zeros(rng, random_input(rng, rows + (features,)))
        w_signs = random_signs(rng, (37, features))
        model = make_model("BinaryLinear", x.shape, {"W": binarize.packing.pack_weight(w_signs),
                                                     "multiplier": np.ones(37, np.float32),
                                                     "bias": np.zeros(37, np.float32)}, in_features=features)
        signs = np.where(x >= 0, 1.0, -1.0)  # NaN >= 0 is False: -1, as the spec says
        add(f"linear{i}", model, x, signs @ w_signs.T.astype(np.float64), True)
    return jobs, expected, exact


@needs_aarch64
@pytest.mark.parametrize("isa", ["neon", "scalar", "reference", None], ids=lambda isa: isa or "default")
def test_aarch64_kernels_match_pytorch(aarch64_runner, isa, tmp_path):
    jobs, expected, exact = kernel_jobs(tmp_path)
    for job, want, is_exact, got in zip(jobs, expected, exact, aarch64_runner.outputs(jobs, isa)):
        assert got.shape == want.shape, job[0].name
        if is_exact:
            np.testing.assert_array_equal(got, want, err_msg=f"integer D differs on {isa}: {job[0].name}")
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=f"{isa}: {job[0].name}")


@needs_aarch64
def test_aarch64_lists_neon_first_and_refuses_x86_paths(aarch64_runner, exported_model, tmp_path):
    folder, _ = exported_model
    job = (folder / "model.onnx", folder / "input.npy", tmp_path / "out.npy")
    result = aarch64_runner.run([job])
    assert "binarize kernel paths (fastest first): neon,scalar,reference\n" in result.stdout, result.stderr
    result = aarch64_runner.run([job], isa="avx2")
    assert result.returncode == 1 and "BINARIZE_ISA=avx2 is not supported by this CPU" in result.stderr
    result = aarch64_runner.run([job], isa="sse9")
    assert "is not one of avx512, avx512bw, avx2, neon, scalar, reference" in result.stderr
