#!/bin/sh
# Fetch the ONNX Runtime C/C++ API headers without root and without touching the system:
# the onnxruntime pip wheel ships no headers, but Debian's libonnxruntime-dev does.
# We download that one .deb with a private apt configuration and unpack it into a cache.
#
# Usage: kernels/fetch_ort_headers.sh [CACHE_DIR]   (default: <repo>/.cache/ort-headers)
# Prints the include directory (containing onnxruntime_c_api.h) on the last line of stdout.
set -eu

repo_root=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
cache_dir=${1:-"$repo_root/.cache/ort-headers"}
include_dir="$cache_dir/root/usr/include/onnxruntime"

if [ -f "$include_dir/onnxruntime_c_api.h" ]; then
    echo "$include_dir"
    exit 0
fi

command -v apt-get >/dev/null 2>&1 || {
    echo "fetch_ort_headers: apt-get not found; set ORT_INCLUDE_DIR to a directory containing onnxruntime_c_api.h" >&2
    exit 1
}

mkdir -p "$cache_dir/lists/partial" "$cache_dir/archives/partial" "$cache_dir/debs"
# trixie is the first Debian release packaging onnxruntime (1.21, C API version 21).
echo "deb http://deb.debian.org/debian trixie main" > "$cache_dir/sources.list"
apt_opts="-o Dir::Etc::SourceList=$cache_dir/sources.list -o Dir::Etc::SourceParts=/dev/null \
 -o Dir::State::Lists=$cache_dir/lists -o Dir::Cache=$cache_dir -o Debug::NoLocking=1 \
 -o APT::Sandbox::User=root"
# shellcheck disable=SC2086
apt-get $apt_opts update >&2
# shellcheck disable=SC2086
(cd "$cache_dir/debs" && apt-get $apt_opts download libonnxruntime-dev >&2)
for deb in "$cache_dir"/debs/libonnxruntime-dev_*.deb; do
    dpkg-deb -x "$deb" "$cache_dir/root"
done
[ -f "$include_dir/onnxruntime_c_api.h" ] || {
    echo "fetch_ort_headers: libonnxruntime-dev did not contain onnxruntime_c_api.h" >&2
    exit 1
}
echo "$include_dir"
