#!/usr/bin/env bash
# Create or reuse the virtual environment and install adaptune with its dev, tensorboard and quant extras.
# Idempotent: the stamp file is written last, so a killed install is simply redone on the next call.
set -euo pipefail
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.adaptune-installed"
HASH="$(cat pyproject.toml tools/bootstrap.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi
rm -f "$STAMP"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip >/dev/null
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" install torch
  else
    # CPU machine: take the CPU wheel first (a bare `torch` requirement would pull a multi-GB CUDA build).
    "${PIP[@]}" install "torch==2.13.0" || "${PIP[@]}" install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${PIP[@]}" install -e ".[dev,tensorboard,quant]"
echo "$HASH" > "$STAMP"
