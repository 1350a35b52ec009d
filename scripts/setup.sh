#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its dev extras.
# torch==2.13.0 goes in first when torch is missing: on the project's CPU machines it is a local
# CPU wheel; elsewhere pip fetches the normal wheel (see README for a CPU-only install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"
python -m ipykernel install --sys-prefix --name python3 >/dev/null 2>&1 || true
python -c "import torch, tiktoken; print(f'setup ok: torch {torch.__version__}, python', __import__('sys').version.split()[0])"
