#!/usr/bin/env bash
# Build llama-cpp-python for this machine's CPU, once per flag set, and print the wheel's path.
#
#   scripts/llama-build.sh                 # the wheel for this CPU (built the first time, ~10 min)
#   scripts/llama-build.sh --rebuild       # build it again even if cached
#   COVE_LLAMA_CPU=portable scripts/llama-build.sh   # the AVX2 set, without AVX-512/AMX
#   CMAKE_ARGS="-DGGML_NATIVE=OFF ..." scripts/llama-build.sh   # your own flags (their own cache entry)
#
# Why not a plain `pip install llama-cpp-python`: its default build is -march=native, which compiles
# AMX code on an Intel Xeon whose OS does not enable AMX (the first token then faults), and pip's wheel
# cache ignores CMAKE_ARGS, so a bad wheel is silently reused. Here the flags come from what the CPU
# *and the OS* offer (cove/cpu.py), and each flag set has its own folder under
# ${COVE_WHEEL_CACHE:-~/.cache/cove/wheels}: a changed flag set rebuilds, and a wheel built for other
# flags (another CPU) is never picked up. pip's own cache is bypassed (--no-cache-dir).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1
version=$(sed -n 's/^llama_cpp_python==//p' constraints.txt)
[ -n "$version" ] || { echo "constraints.txt pins no llama_cpp_python version" >&2; exit 1; }
if [ -z "${CMAKE_ARGS:-}" ]; then
  CMAKE_ARGS=$("$PYTHON" cove/cpu.py cmake-args)
fi
export CMAKE_ARGS
key=$("$PYTHON" cove/cpu.py key "$version")
cache=${COVE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cove/wheels}
dir="$cache/llama-cpp-python-$version-$key"
wheel=$(ls "$dir"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ] || [ "$rebuild" -eq 1 ]; then  # the old wheel stays until the new one is whole
  echo "Building llama-cpp-python $version for this CPU (about 10 minutes on 2 cores):" >&2
  echo "  CMAKE_ARGS=$CMAKE_ARGS" >&2
  tmp=$(mktemp -d "$cache.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$cache"; mktemp -d "$cache.tmp.XXXXXX"; })
  trap 'rm -rf "$tmp"' EXIT
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$PYTHON" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
    -c constraints.txt "llama-cpp-python==$version" -w "$tmp" >&2
  "$PYTHON" cove/cpu.py report >"$tmp/build.json"
  printf '%s\n' "$CMAKE_ARGS" >"$tmp/cmake-args.txt"
  mkdir -p "$cache"
  rm -rf "$dir"
  mv -T "$tmp" "$dir"  # whole or not at all: an interrupted build leaves the previous wheel or none
  trap - EXIT
  wheel=$(ls "$dir"/llama_cpp_python-*.whl | head -n1)
fi
echo "$wheel"
