#!/bin/sh
# Builds the sdist and, from it, manylinux_2_28 wheels for x86_64 and aarch64 into dist/, checks
# them with `auditwheel show`, and installs the sdist and the host's wheel into fresh virtual
# environments, where tests/test_kernels.py and tests/test_cpu_detection.py must pass; when
# `make test-aarch64` has run, the aarch64 wheel's library also passes its tests under qemu.
#
#   packaging/build_wheels.sh [PYTHON]     (make wheels; default PYTHON: .venv/bin/python)
#
# The wheels hold libbinarize_ort.so, which ONNX Runtime loads (Python never imports it), so they
# are tagged py3-none-manylinux_2_28_<arch>: any Python 3, glibc >= 2.28. The library is compiled
# by `zig c++ -target <arch>-linux-gnu.2.28` (the ziglang package from PyPI): it links against
# glibc 2.28's symbol versions and links LLVM's libc++ statically, so it needs neither a newer
# glibc nor any libstdc++ on the target. (GCC 12's static libstdc++ would pull in glibc 2.32-2.36
# symbols: __libc_single_threaded, arc4random, _dl_find_object.) The wheel builds run without
# network (`unshare -n` when permitted) from the unpacked sdist.
set -eu

repo=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
python=${1:-"$repo/.venv/bin/python"}
case $python in  # the builds run from other folders: a relative path (make's .venv/bin/python) must not break
    /*) ;;
    */*) python="$PWD/$python" ;;
esac
dist="$repo/dist"
work="$repo/build/wheels"
zig_version=0.17.1
zig_dir="$repo/.cache/zig-$zig_version"
export ZIG_GLOBAL_CACHE_DIR="$repo/.cache/zig-cache" ZIG_LOCAL_CACHE_DIR="$repo/.cache/zig-cache"

"$python" -m pip install --quiet --disable-pip-version-check build auditwheel wheel
[ -x "$zig_dir/ziglang/zig" ] ||
    "$python" -m pip install --quiet --disable-pip-version-check --target "$zig_dir" "ziglang==$zig_version"
offline=""
if command -v unshare >/dev/null 2>&1 && unshare -n true 2>/dev/null; then offline="unshare -n"; fi

rm -rf "$work"
mkdir -p "$work" "$dist"
version=$("$python" -c "import tomllib; print(tomllib.load(open('$repo/pyproject.toml', 'rb'))['project']['version'])")
"$python" -m build --sdist --no-isolation --outdir "$work" "$repo" >&2
sdist="$work/binarize-$version.tar.gz"
cp "$sdist" "$dist/"

for arch in x86_64 aarch64; do
    mkdir -p "$work/$arch"
    tar -xzf "$sdist" -C "$work/$arch"
    printf '#!/bin/sh\nexec "%s" c++ -target %s-linux-gnu.2.28 "$@"\n' "$zig_dir/ziglang/zig" "$arch" > "$work/$arch/c++"
    chmod +x "$work/$arch/c++"
    # shellcheck disable=SC2086
    (cd "$work/$arch" && CXX="$work/$arch/c++" BINARIZE_PORTABLE=1 $offline "$python" -m pip wheel --quiet \
        --disable-pip-version-check --no-build-isolation --no-deps --no-index -w "$work/$arch/raw" "./binarize-$version")
    "$python" -m wheel tags --remove --python-tag py3 --abi-tag none --platform-tag "manylinux_2_28_$arch" \
        "$work/$arch"/raw/binarize-*.whl >/dev/null
    wheel=$(ls "$work/$arch"/raw/binarize-*-py3-none-manylinux_2_28_$arch.whl)
    "$python" -m auditwheel show "$wheel"
    cp "$wheel" "$dist/"
done

# Fresh environments: the sdist (built by pip as a user would) and the host's wheel. The pinned
# dependencies come from $python's environment through a .pth file instead of a new download.
site=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
host_arch=$(uname -m)
for package in "$dist/binarize-$version.tar.gz" "$dist/binarize-$version-py3-none-manylinux_2_28_$host_arch.whl"; do
    venv="$work/venv-$(basename "$package" | sed 's/[^a-z0-9]/_/g')"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$package"
    venv_site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$site" > "$venv_site/zz-build-python-deps.pth"
    echo "== $(basename "$package") in a fresh venv:" >&2
    (cd "$work" && "$venv/bin/python" -c "import binarize.kernels as k; print(k.library_path(), k.available_isas())" &&
     "$venv/bin/python" -m pytest -q -p no:cacheprovider "$repo/tests/test_kernels.py" "$repo/tests/test_cpu_detection.py")
done
# The aarch64 wheel's library under qemu, with the runner and emulator `make test-aarch64` left.
runner="$repo/build/aarch64/runner"
if [ -x "$runner/binarize_run" ] && [ -x "$repo/.cache/aarch64/qemu-aarch64" ]; then
    device="$work/aarch64/device"
    mkdir -p "$device"
    cp "$runner/binarize_run" "$device/" && cp -L "$runner/libonnxruntime.so.1" "$device/"
    (cd "$device" && "$python" -m zipfile -e "$dist/binarize-$version-py3-none-manylinux_2_28_aarch64.whl" wheel &&
     mv wheel/binarize/libbinarize_ort.so . && rm -rf wheel)
    echo "== the aarch64 wheel's libbinarize_ort.so under qemu:" >&2
    (cd "$repo" && BINARIZE_AARCH64_BUILD="$device" \
        BINARIZE_AARCH64_EMULATOR="$repo/.cache/aarch64/qemu-aarch64 -L /usr/aarch64-linux-gnu" \
        "$python" -m pytest -q -p no:cacheprovider tests/test_cpp_runner.py -k aarch64)
else
    echo "(run make test-aarch64 first to also test the aarch64 wheel's library under qemu)" >&2
fi
ls -l "$dist"
