#!/usr/bin/env bash
# Build llama.cpp's own server (llama-server) from the llama-cpp-python sdist, offline.
#
# Why: llama-cpp-python's server answers one request at a time; llama-server has parallel slots
# and continuous batching, and it reports how many prompt tokens each request took from its
# cache. local_llm_server() uses it when it finds it (see server.py beside this file).
#
# Run by `llamaindex-rerankers llm-server --build` (build_llama_server() in server.py), and in a
# checkout by scripts/build-llama-server.sh (`make llama-server`), which builds into .cache/.
#
# Idempotent: the binary goes to $LLAMA_SERVER_CACHE/<version>/llama-server (default: the user
# cache, ${XDG_CACHE_HOME:-~/.cache}/llamaindex-rerankers/llama-server, where the library looks)
# and nothing is done when it is already there. The only download is the sdist, from PyPI
# through pip (set LLAMA_CPP_PYTHON_SDIST=/path/to/llama_cpp_python-<version>.tar.gz to use a
# local copy). The build is static (-DBUILD_SHARED_LIBS=OFF), so the one file is all it needs
# besides the C/C++ runtime and OpenMP; it is built for this machine's CPU (llama.cpp's default).
#
#   bash build_llama_server.sh            # about 4-5 min on 2 cores
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=2 LLAMA_SERVER_CACHE=/opt/llama bash build_llama_server.sh
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
if [ -z "${LLAMA_SERVER_CACHE:-}" ]; then
  if [ -n "${LLAMAINDEX_RERANKERS_CACHE:-}" ]; then
    LLAMA_SERVER_CACHE="$LLAMAINDEX_RERANKERS_CACHE/llama-server"
  else
    LLAMA_SERVER_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/llamaindex-rerankers/llama-server"
  fi
fi
DEST_DIR="$LLAMA_SERVER_CACHE/$VERSION"
DEST="$DEST_DIR/llama-server"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
PYTHON="${PYTHON:-python3}"

if [ -x "$DEST" ] && "$DEST" --version >/dev/null 2>&1; then
  echo "llama-server $VERSION already built: $DEST"
  exit 0
fi
for tool in cmake c++ tar; do
  command -v "$tool" >/dev/null || { echo "build-llama-server: $tool is missing" >&2; exit 1; }
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SDIST="${LLAMA_CPP_PYTHON_SDIST:-}"
if [ -z "$SDIST" ]; then
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$WORK"
  SDIST="$(ls "$WORK"/llama_cpp_python-"$VERSION".tar.gz)"
fi
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -f "$SRC/tools/server/server.cpp" ] || { echo "no llama-server sources in $SDIST" >&2; exit 1; }

start=$(date +%s)
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_CCACHE=OFF >"$WORK/configure.log" \
  || { cat "$WORK/configure.log" >&2; exit 1; }
cmake --build "$WORK/build" --target llama-server -j"$JOBS" >"$WORK/build.log" 2>&1 \
  || { tail -50 "$WORK/build.log" >&2; exit 1; }

mkdir -p "$DEST_DIR"
install -m 755 "$WORK/build/bin/llama-server" "$DEST.tmp"
mv "$DEST.tmp" "$DEST"  # atomic: a half-copied binary is never found
"$DEST" --version
echo "built llama-server $VERSION in $(( $(date +%s) - start )) s: $DEST"
