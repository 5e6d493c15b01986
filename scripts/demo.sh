#!/usr/bin/env bash
# The main job, offline: install, serve the bundled sample data on 127.0.0.1 with a small
# page cap (so paging is exercised), and pull every sample layer into out/ in each format.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
mkdir -p out
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
svc="$base/arcgis/rest/services"
ags() { .venv/bin/ags-etl "$@"; }
ags inspect "$svc/parks/FeatureServer/0"
ags pull "$svc/parks/FeatureServer/0" -o out/parks.geojson --overwrite
ags pull "$svc/parks/FeatureServer/0" -o out/parks.parquet --overwrite
ags pull "$svc/hydrants/FeatureServer/0" -o out/hydrants.shp --overwrite
ags pull "$svc/hydrants/FeatureServer/0" -o out/hydrants.kmz --overwrite
ags pull "$svc/streets/FeatureServer/0" -o out/streets_4326.parquet --t-srs EPSG:4326 --overwrite
ags pull "$svc/survey_marks/FeatureServer/0" -o out/survey_marks.geojsonl --overwrite
ags pull "$svc/inspections/FeatureServer/0" -o out/inspections.parquet --overwrite
echo "done: outputs in out/"
