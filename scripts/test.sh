#!/usr/bin/env bash
# Install everything the tests need (Python packages, Koop from npm) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
exec .venv/bin/python -m pytest "$@"
