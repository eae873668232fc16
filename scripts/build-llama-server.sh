#!/usr/bin/env bash
# `make llama-server`: build llama.cpp's llama-server into this checkout's .cache/llama-server
# (where the library looks when it runs from a checkout). The build itself is the package's
# llamaindex_rerankers/endpoints/build_llama_server.sh, which `llamaindex-rerankers llm-server --build`
# runs for pip users (into ~/.cache/llamaindex-rerankers/llama-server); see it for the settings
# (LLAMA_CPP_PYTHON_VERSION, LLAMA_CPP_PYTHON_SDIST, JOBS).
#
#   scripts/build-llama-server.sh            # about 4-5 min on 2 cores
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 JOBS=2 scripts/build-llama-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export LLAMA_SERVER_CACHE="${LLAMA_SERVER_CACHE:-$PWD/.cache/llama-server}"
export PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
exec bash llamaindex_rerankers/endpoints/build_llama_server.sh "$@"
