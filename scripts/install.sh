#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install ags_etl into it, with test extras when asked:
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh test     # the tool, test dependencies and the Koop test server (npm)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install --quiet -e '.[test]'
  # Koop, the third-party FeatureServer the tests pull from: pinned by tests/koop/package-lock.json.
  npm ci --omit=optional --no-audit --no-fund --prefix tests/koop >/dev/null
else
  .venv/bin/python -m pip install --quiet -e .
fi
