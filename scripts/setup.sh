#!/usr/bin/env bash
# Create .venv and install tailsynth with its pinned torch/torchvision and dev tools.
# Idempotent: a second run only re-checks. Uses the machine's local package mirror
# when pip is configured for one, else PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.tailsynth-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, on its own: its wheel is the big one and the pin must win.
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
.venv/bin/python -c "import torch, torchvision, timm, diffusers, celery, fastapi; print('tailsynth env ready: torch', torch.__version__)"
