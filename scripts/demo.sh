#!/usr/bin/env bash
# The main job, offline: install, serve the bundled sample data on 127.0.0.1 with a small
# page cap (so paging is exercised), and run pipelines/demo.yaml, which writes every sample
# layer into out/ in every format (one job reprojects, one clips) and prints a summary.
# Extra arguments go to `ags-etl run` (e.g. --report out/report.json, --job parks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p out/all
log=$(mktemp)
.venv/bin/ags-etl serve sample_data --port 0 --max-record-count 25 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  grep -q "listening on" "$log" && break
  sleep 0.1
done
base=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -n 1)
if [ -z "$base" ]; then echo "the local server did not start:"; cat "$log"; exit 1; fi
export AGS_ETL_DEMO_URL="$base/arcgis/rest/services"
.venv/bin/ags-etl inspect "$AGS_ETL_DEMO_URL/parks/FeatureServer/0"
.venv/bin/ags-etl run pipelines/demo.yaml "$@"
echo "done: outputs in out/"
