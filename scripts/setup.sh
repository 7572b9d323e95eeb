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
# The HTML report's tests open it in a real headless Chromium. Playwright (a dev
# dependency; its node driver ships inside the wheel) drives the system browser:
# never `playwright install`. Without the browser those tests skip, and fail under CI.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium with apt-get for the report's browser tests"
    apt_log=$(mktemp)
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >"$apt_log" 2>&1; then
      tail -n 5 "$apt_log" >&2
      echo "warning: apt-get could not install chromium; the report's browser tests will skip (fail under CI)" >&2
    fi
    rm -f "$apt_log"
  else
    echo "warning: /usr/bin/chromium is missing (install it as root: apt-get install chromium); the report's browser tests will skip (fail under CI)" >&2
  fi
fi
.venv/bin/python -c "import torch, torchvision, timm, diffusers, celery, fastapi; print('tailsynth env ready: torch', torch.__version__)"
