#!/usr/bin/env bash
# Installs the third-party LLM servers the tests start, each in a venv of its own in the repo
# root, so Loom's own venv stays light:
#   .venv-litellm   the LiteLLM proxy (tools/test_servers/litellm.txt)
#   .venv-llama     the llama-cpp-python server, built from its sdist on PyPI, and gguf
# Building llama-cpp-python compiles llama.cpp (minutes); the wheel is cached outside the repo
# in ${LOOM_CI_CACHE:-$HOME/.cache/loom-ci}/wheels, so the next run installs it in seconds.
# Safe to run again: a venv that already has the pinned versions is left alone.
# Prints the variables the test fixtures read (LOOM_LITELLM_BIN, LOOM_LLAMA_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

LLAMA_VERSION=0.3.36
PYTHON=${PYTHON:-python3}
CACHE=${LOOM_CI_CACHE:-$HOME/.cache/loom-ci}
WHEELS="$CACHE/wheels"
# CPU only, portable (no -march=native: a cached wheel may run on another CPU), and only the
# library the bindings load: no multimodal (mtmd) library, no OpenMP, no tests, tools or examples.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

say() { printf 'install_test_servers: %s\n' "$*" >&2; }
seconds() { date +%s; }

installed() {  # VENV PACKAGE VERSION: is that version in that venv?
  [ -x "$1/bin/python" ] && [ "$("$1/bin/python" -c "import importlib.metadata as m; print(m.version('$2'))" 2>/dev/null)" = "$3" ]
}

# ------------------------------------------------------------------ LiteLLM proxy
start=$(seconds)
if installed .venv-litellm litellm "$(sed -n 's/^litellm==//p' tools/test_servers/litellm.txt)"; then
  say "LiteLLM: .venv-litellm is up to date"
else
  "$PYTHON" -m venv .venv-litellm
  .venv-litellm/bin/pip install -q -r tools/test_servers/litellm.txt
  say "LiteLLM: installed in $(( $(seconds) - start )) s"
fi

# ------------------------------------------------------------------ llama-cpp-python server
start=$(seconds)
if installed .venv-llama llama_cpp_python "$LLAMA_VERSION" || installed .venv-llama llama-cpp-python "$LLAMA_VERSION"; then
  say "llama-cpp-python: .venv-llama is up to date"
else
  mkdir -p "$WHEELS"
  # The wheel is py3-none-<platform>: one per machine kind, whatever the Python.
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    say "llama-cpp-python: building $LLAMA_VERSION from its sdist (compiles llama.cpp; minutes)"
    build=$(mktemp -d)
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      "$PYTHON" -m pip wheel -q --no-deps --no-binary llama-cpp-python -w "$build" \
      "llama-cpp-python==$LLAMA_VERSION"
    mv "$build"/llama_cpp_python-*.whl "$WHEELS"/  # only a finished wheel lands in the cache
    rm -rf "$build"
    say "llama-cpp-python: built in $(( $(seconds) - start )) s, cached in $WHEELS"
  fi
  "$PYTHON" -m venv .venv-llama
  # --only-binary: the cached wheel, never a rebuild; its dependencies from the index.
  .venv-llama/bin/pip install -q --find-links "$WHEELS" --only-binary llama-cpp-python \
    "llama-cpp-python[server]==$LLAMA_VERSION" -r tools/test_servers/llama.txt
  say "llama-cpp-python: .venv-llama ready in $(( $(seconds) - start )) s"
fi

echo "LOOM_LITELLM_BIN=$ROOT/.venv-litellm/bin/litellm"
echo "LOOM_LLAMA_PYTHON=$ROOT/.venv-llama/bin/python"
