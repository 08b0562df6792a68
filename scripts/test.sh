#!/usr/bin/env bash
# Install, then run the whole test suite: fast unit tests and the slow ones on the real embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
# The engine tests need llama.cpp (built from source by pip: 10-20 min on 2 cores) and mlx-lm.
EVOPRUNE_EXTRAS=dev,serving bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m pytest -m "slow or not slow" -q -p no:cacheprovider "$@"
