#!/usr/bin/env bash
# Install everything the tests need (Python packages, Koop from npm) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# Two workers (pytest-xdist), one test module per worker at a time: most tests wait on local
# servers and subprocesses, so this halves the wall time on a 2-core machine. AGS_ETL_TEST_WORKERS=0
# runs everything in one process.
exec .venv/bin/python -m pytest -n "${AGS_ETL_TEST_WORKERS:-2}" --dist loadfile "$@"
