"""The README's main job: pipelines/demo.yaml against the local server on sample_data/, offline.

scripts/demo.sh installs ags_etl, starts ``ags-etl serve sample_data --port 0
--max-record-count 25`` and runs the pipeline; here the same server is a fixture and the
same pipeline runs through ``ags-etl run`` (no reinstall), its outputs read back with GDAL
(pyogrio), geopandas and pyarrow.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from pyproj import CRS

from ags_etl.server.testing import run_server
from tests.cli.helpers import ags

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
DEMO = ROOT / "pipelines" / "demo.yaml"
KML_DRIVER = "LIBKML" if "LIBKML" in pyogrio.list_drivers() else "KML"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with run_server(SAMPLE, "--max-record-count", "25") as base:
        yield base


def test_demo_script_is_valid_bash() -> None:
    proc = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    script = (ROOT / "scripts" / "demo.sh").read_text()
    assert "ags-etl run pipelines/demo.yaml" in script and "AGS_ETL_DEMO_URL" in script


def test_demo_pipeline_writes_every_format(server: str, tmp_path: Path) -> None:
    (tmp_path / "all").mkdir()
    report = tmp_path / "report.json"
    env = {"AGS_ETL_DEMO_URL": f"{server}/arcgis/rest/services", "AGS_ETL_DEMO_OUT": str(tmp_path)}
    proc = ags("run", str(DEMO), "--report", str(report), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    by_name = {j["name"]: j for j in data["jobs"]}
    assert all(j["status"] == "ok" for j in data["jobs"])
    assert proc.stdout.splitlines()[-1].startswith(f"{len(data['jobs'])} jobs: {len(data['jobs'])} ok")

    parks_src = gpd.read_file(SAMPLE / "parks.geojson")
    parks = gpd.read_file(tmp_path / "parks.geojson")
    assert sorted(parks["OBJECTID"]) == sorted(parks_src["OBJECTID"]) and len(parks) == 40

    # the clip: every park touching the box, cut to it
    box = shapely.box(-122.51, 37.71, -122.45, 37.80)
    touching = parks_src[parks_src.intersects(box)]
    west = gpd.read_parquet(tmp_path / "parks_west.parquet")
    assert sorted(west["OBJECTID"]) == sorted(touching["OBJECTID"])
    assert 0 < len(west) < 40
    assert west.total_bounds[2] <= -122.45 + 1e-9
    assert list(west.columns) == ["OBJECTID", "NAME", "STATUS", "geometry"]
    assert by_name["parks_west"]["written"] == len(west)

    hydrants = gpd.read_file(tmp_path / "hydrants.shp")
    assert len(hydrants) == 184 and set(hydrants["STATUS"]) == {"IN SERVICE"}
    assert CRS(hydrants.crs).equals(CRS.from_epsg(2227), ignore_axis_order=True)
    kmz = pyogrio.read_dataframe(tmp_path / "hydrants.kmz", driver=KML_DRIVER)
    assert len(kmz) == 300

    streets = gpd.read_parquet(tmp_path / "streets_4326.parquet")
    assert len(streets) == 150 and streets.crs.to_epsg() == 4326
    minx, miny, maxx, maxy = streets.total_bounds
    assert -122.6 < minx < maxx < -122.3 and 37.6 < miny < maxy < 37.9

    marks = pyogrio.read_dataframe(tmp_path / "survey_marks.geojsonl")
    assert len(marks) == 25
    inspections = pq.read_table(tmp_path / "inspections.parquet")
    assert inspections.num_rows == 30 and "INSPECTOR" in inspections.column_names

    everything = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert len(everything) == 5 and all(name.endswith(".parquet") for name in everything)
    assert sum(pq.read_metadata(tmp_path / "all" / n).num_rows for n in everything) == 40 + 25 + 300 + 150 + 30
    assert not [p for p in tmp_path.rglob(".*")], "no temp leftovers"
