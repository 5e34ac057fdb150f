#!/usr/bin/env bash
# Installs the third-party LLM servers the tests start, each in a venv of its own in the repo
# root, so Loom's own venv stays light:
#   .venv-litellm   the LiteLLM proxy (tools/test_servers/litellm.txt)
#   .venv-llama     the llama-cpp-python server, built from its sdist on PyPI, and gguf
#                   (tools/test_servers/llama.txt)
# Everything is cached as wheels outside the repo, in ${LOOM_CI_CACHE:-$HOME/.cache/loom-ci}:
# building llama-cpp-python compiles llama.cpp (about 15 CPU-minutes), and resolving and
# downloading LiteLLM's ~90 packages takes minutes more; with the cache, a fresh clone (CI's)
# installs both venvs offline from local wheels. A venv that already has the pinned versions is
# left alone. Prints the variables the test fixtures read (LOOM_LITELLM_BIN, LOOM_LLAMA_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PYTHON=${PYTHON:-python3}
CACHE=${LOOM_CI_CACHE:-$HOME/.cache/loom-ci}
LITELLM_REQS=tools/test_servers/litellm.txt
LLAMA_REQS=tools/test_servers/llama.txt
LLAMA_VERSION=0.3.36
# CPU only, portable (no -march=native: a cached wheel may run on another CPU of the same kind),
# and only the library the bindings load: no multimodal (mtmd) library, no OpenMP, no tests,
# tools or examples.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

say() { printf 'install_test_servers: %s\n' "$*" >&2; }
now() { date +%s; }
digest() { sha256sum | cut -c1-12; }  # of stdin: what a cache entry was made from

# The wheels' ABI: a cache entry made by another Python or platform is not this one's.
ABI=$("$PYTHON" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())')

installed() {  # VENV PACKAGE VERSION: has that venv that version?
  [ -x "$1/bin/python" ] && [ "$("$1/bin/python" -c \
    "import importlib.metadata as m; print(m.version('$2'))" 2>/dev/null)" = "$3" ]
}

wheelhouse() {  # DIR PIP-WHEEL-ARGS...: fill DIR with wheels for the args, once; atomically
  local dir=$1; shift
  if [ ! -f "$dir/.complete" ]; then
    local tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    "$PYTHON" -m pip wheel -q -w "$tmp" "$@"
    touch "$tmp/.complete"
    rm -rf "$dir" && mv "$tmp" "$dir"  # only a complete set becomes the cache entry
  fi
}

venv_from() {  # VENV DIR REQUIREMENTS...: the venv, from DIR's wheels only (no index)
  local venv=$1 dir=$2; shift 2
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --no-index --find-links "$dir" "$@"
}

# ------------------------------------------------------------------ LiteLLM proxy
start=$(now)
litellm_version=$(sed -n 's/^litellm==//p' "$LITELLM_REQS")
if installed .venv-litellm litellm "$litellm_version"; then
  say "LiteLLM $litellm_version: .venv-litellm is up to date"
else
  house="$CACHE/wheels/litellm-$( (cat "$LITELLM_REQS"; echo "$ABI") | digest)"
  wheelhouse "$house" -r "$LITELLM_REQS"
  venv_from .venv-litellm "$house" -r "$LITELLM_REQS"
  say "LiteLLM $litellm_version: .venv-litellm ready in $(( $(now) - start )) s"
fi

# ------------------------------------------------------------------ llama-cpp-python server
start=$(now)
if installed .venv-llama llama_cpp_python "$LLAMA_VERSION"; then
  say "llama-cpp-python $LLAMA_VERSION: .venv-llama is up to date"
else
  # The compiled wheel (py3-none-<platform>: any Python 3 on this kind of machine), built once
  # per version and build flags.
  built="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$(echo "$LLAMA_CMAKE_ARGS $ABI" | digest)"
  if [ ! -f "$built/.complete" ]; then
    say "llama-cpp-python $LLAMA_VERSION: building from its sdist (compiles llama.cpp)"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      wheelhouse "$built" --no-deps --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"
    say "llama-cpp-python $LLAMA_VERSION: built in $(( $(now) - start )) s"
  fi
  # Its dependencies (the server extra, gguf) beside it; --only-binary: the built wheel, never
  # a second build.
  house="$CACHE/wheels/llama-venv-$( (cat "$LLAMA_REQS"; echo "$LLAMA_VERSION $(basename "$built") $ABI") | digest)"
  wheelhouse "$house" --find-links "$built" --only-binary llama-cpp-python \
    "llama-cpp-python[server]==$LLAMA_VERSION" -r "$LLAMA_REQS"
  venv_from .venv-llama "$house" "llama-cpp-python[server]==$LLAMA_VERSION" -r "$LLAMA_REQS"
  say "llama-cpp-python $LLAMA_VERSION: .venv-llama ready in $(( $(now) - start )) s"
fi

echo "LOOM_LITELLM_BIN=$ROOT/.venv-litellm/bin/litellm"
echo "LOOM_LLAMA_PYTHON=$ROOT/.venv-llama/bin/python"
