#!/usr/bin/env bash
# Try the newest dependency versions that pyproject.toml allows, in a fresh virtual environment,
# and run the fast tests against them, so that the next upstream break is found by us first.
# Not part of CI. Prints what changed against constraints.txt.
#
#   bash scripts/test-latest.sh            # fresh venv in a temporary folder, fast tests
#   bash scripts/test-latest.sh --lock     # ... and when they pass, write those versions to constraints.txt
#
# Extra arguments after `--` go to pytest, e.g. `bash scripts/test-latest.sh -- -m "slow or not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=0
if [[ "${1:-}" == "--lock" ]]; then LOCK=1; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
PY=${PYTHON:-python3}
VENV=$(mktemp -d "${TMPDIR:-/tmp}/evoprune-latest.XXXXXX")
trap 'rm -rf "$VENV"' EXIT
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.13.0   # the CPU wheel; see scripts/setup.sh
"$VENV/bin/python" -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev,serving]"
"$VENV/bin/python" -m evoprune.cli fetch-assets >/dev/null
FROZEN="$VENV/frozen.txt"
"$VENV/bin/python" scripts/freeze_constraints.py "$VENV/bin/python" > "$FROZEN"
echo "== versions that differ from constraints.txt (< locked, > newest allowed) =="
diff <(grep -v '^#' constraints.txt) <(grep -v '^#' "$FROZEN") || true
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
if [[ $LOCK == 1 ]]; then
  cp "$FROZEN" constraints.txt
  echo "constraints.txt updated: commit it with the test run that passed"
fi
