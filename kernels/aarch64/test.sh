#!/bin/sh
# Cross-builds the kernel library and the C++ runner (examples/cpp) for 64-bit ARM Linux and runs
# the aarch64 tests of tests/test_cpp_runner.py under qemu-user: every kernel shape on the neon,
# scalar and reference paths, exactly against PyTorch, and an exported model against the host's
# binarize.runtime. `make test-aarch64` runs it; .ci/run calls that after `make test`.
#
#   kernels/aarch64/test.sh [PYTHON]      (default: .venv/bin/python, which needs the test dependencies)
#
# What it needs, installed on first use, from Debian and PyPI only:
#   - g++-aarch64-linux-gnu: apt-get install (as root, or with password-less sudo);
#   - qemu-user 10 (bookworm-backports; bookworm's 7.2 crashes in ONNX Runtime): downloaded with a
#     private apt configuration and unpacked into .cache/aarch64/qemu — the system is not changed;
#   - ONNX Runtime for aarch64: the onnxruntime manylinux_2_28_aarch64 wheel from PyPI (its
#     libonnxruntime.so), via pip download into .cache/aarch64.
# Everything is cached in .cache/aarch64, so later runs only rebuild what changed. If something
# cannot be installed (no network, not root, not Debian), the tests are skipped with the reason
# and the script exits 0: CI must not fail for want of a cross toolchain.
set -eu

repo=$(CDPATH= cd -- "$(dirname -- "$0")/../.." && pwd)
cache="$repo/.cache/aarch64"
python=${1:-"$repo/.venv/bin/python"}
ort_version=$("$python" -c "import onnxruntime; print(onnxruntime.__version__)")

skip() {
    echo "test-aarch64: SKIPPED: $*" >&2
    exit 0
}
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"; else return 1; fi
}

# 1. The cross compiler.
if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || skip "no aarch64-linux-gnu-g++ and no apt-get to install it"
    echo "test-aarch64: installing g++-aarch64-linux-gnu" >&2
    { as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++-aarch64-linux-gnu ||
      { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++-aarch64-linux-gnu; }; } >&2 ||
        skip "could not install g++-aarch64-linux-gnu (needs root or sudo, and Debian's archive): apt-get install g++-aarch64-linux-gnu"
fi
sysroot=/usr/aarch64-linux-gnu

# 2. qemu-user 10, unpacked from bookworm-backports into the cache.
qemu="$cache/qemu-aarch64"
if [ ! -x "$qemu" ]; then
    apt_dir="$cache/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" > "$apt_dir/sources.list"
    apt_opts="-o Dir::Etc::SourceList=$apt_dir/sources.list -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists=$apt_dir/lists -o Dir::Cache=$apt_dir -o Debug::NoLocking=1 -o APT::Sandbox::User=root"
    # shellcheck disable=SC2086
    { apt-get $apt_opts update -q && (cd "$apt_dir/debs" && apt-get $apt_opts download qemu-user); } >&2 ||
        skip "could not download qemu-user from bookworm-backports (deb.debian.org unreachable?)"
    rm -rf "$apt_dir/root"
    dpkg-deb -x "$apt_dir"/debs/qemu-user_*.deb "$apt_dir/root"
    cp "$apt_dir/root/usr/bin/qemu-aarch64" "$qemu.partial" && mv "$qemu.partial" "$qemu"
    rm -rf "$apt_dir/root" "$apt_dir/debs"
fi

# 3. libonnxruntime for aarch64, the same version as the host's onnxruntime.
ort_dir="$cache/onnxruntime-$ort_version"
if [ ! -f "$ort_dir/libonnxruntime.so.$ort_version" ]; then
    mkdir -p "$cache/wheels"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --python-version 3.11 -d "$cache/wheels" "onnxruntime==$ort_version" >&2 ||
        skip "could not download the onnxruntime==$ort_version aarch64 wheel from PyPI"
    "$python" - "$cache/wheels" "$ort_dir" "$ort_version" <<'EOF'
import glob, os, sys, zipfile
wheels, out, version = sys.argv[1:]
[wheel] = glob.glob(os.path.join(wheels, f"onnxruntime-{version}-*aarch64.whl"))
os.makedirs(out, exist_ok=True)
name = f"libonnxruntime.so.{version}"
with zipfile.ZipFile(wheel) as z, open(os.path.join(out, name + ".partial"), "wb") as f:
    f.write(z.read(f"onnxruntime/capi/{name}"))
os.replace(os.path.join(out, name + ".partial"), os.path.join(out, name))
EOF
fi

# 4. Cross-build the op library and the runner into one folder (the runner's run path is $ORIGIN).
build="$repo/build/aarch64"
toolchain="-DCMAKE_TOOLCHAIN_FILE=$repo/kernels/aarch64/toolchain.cmake -DCMAKE_BUILD_TYPE=Release"
# shellcheck disable=SC2086
{ cmake -S "$repo/kernels" -B "$build/kernels" $toolchain &&
  cmake --build "$build/kernels" --parallel &&
  cmake -S "$repo/examples/cpp" -B "$build/runner" $toolchain -DORT_LIBRARY="$ort_dir/libonnxruntime.so.$ort_version" &&
  cmake --build "$build/runner" --parallel; } >&2
cp "$build/kernels/libbinarize_ort.so" "$build/runner/"

# 5. The tests, on the host's Python; binarize_run runs under qemu.
echo "test-aarch64: running tests/test_cpp_runner.py against the aarch64 build under $("$qemu" --version | head -1)" >&2
cd "$repo"
BINARIZE_AARCH64_BUILD="$build/runner" BINARIZE_AARCH64_EMULATOR="$qemu -L $sysroot" \
    "$python" -m pytest -q -rs tests/test_cpp_runner.py -k aarch64
