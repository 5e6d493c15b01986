"""A pull imports only what it uses: no pandas (pyarrow's pandas probe is settled without
it), fiona only for shapefiles, and a piped pull of points to GeoParquet none of the modules
that would only add to its resident memory (rich, pyarrow.compute, yaml, the other loaders)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ags_etl.server.testing import run_server
from tests.cli.helpers import url
from tests.layers import write_layer

#: Runs `ags-etl pull …` in-process, then prints which of the heavy modules got imported.
PROBE = (
    "import sys\n"
    "from ags_etl.cli import main\n"
    "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
    "print(' '.join(m for m in ('pandas', 'fiona', 'geopandas') if m in sys.modules))\n"
    "sys.exit(code)\n"
)


#: Runs `ags-etl pull …` in-process with stderr a pipe, then prints every imported module.
ALL_MODULES_PROBE = (
    "import sys\n"
    "from ags_etl.cli import main\n"
    "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
    "print(' '.join(sorted(sys.modules)))\n"
    "sys.exit(code)\n"
)

#: What a piped pull of plain points to GeoParquet must not import: bars are drawn only on a
#: terminal, pipeline files are read only by run/validate, the output extension picks its
#: loader without importing the others, and decoding and writing plain points read Arrow
#: buffers where pyarrow's own methods would import pyarrow.compute (13 MB resident).
LAZY_FOR_GEOPARQUET = (
    "rich", "yaml", "pyarrow.compute", "pandas", "fiona", "dask", "fsspec",
    "ags_etl.config", "ags_etl.server", "ags_etl.sync",
    "ags_etl.loaders.geojson", "ags_etl.loaders.text", "ags_etl.loaders.kmz", "ags_etl.loaders.shapefile",
    "ags_etl.loaders.feature_service", "ags_etl.arcgis.edits", "ags_etl.transformers.fields",
)


def write_plain_points(path: Path, n: int) -> None:
    """Points with an id, a name and a value each, every one with a geometry (no nulls)."""
    features = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [i * 0.01, 45.0 + i * 0.001]},
         "properties": {"OBJECTID": i, "NAME": f"p{i}", "VALUE": i * 0.5}}
        for i in range(1, n + 1)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("imports")
    write_layer(d / "polygons.geojson", "polygons", 30)
    write_plain_points(d / "points.geojson", 50)
    with run_server(d) as base:
        yield base


def imported(server: str, out: Path) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "pull", url(server, "polygons"), "-o", str(out), "-q"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    return set(proc.stdout.split())


@pytest.mark.parametrize("name", ["out.parquet", "out.geojson", "out.geojsonl", "out.kmz"])
def test_pull_imports_neither_pandas_nor_fiona(server: str, tmp_path: Path, name: str) -> None:
    assert imported(server, tmp_path / name) == set()


def test_shapefile_pull_imports_fiona_but_not_pandas(server: str, tmp_path: Path) -> None:
    assert imported(server, tmp_path / "out.shp") == {"fiona"}


def test_piped_geoparquet_pull_of_points_imports_none_of_the_lazy_modules(server: str, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    # not -q: the progress display is chosen (plain lines, as stderr is a pipe), not skipped
    proc = subprocess.run(
        [sys.executable, "-c", ALL_MODULES_PROBE, "pull", url(server, "points"), "-o", str(out),
         "--page-size", "20"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 50 features" in proc.stderr
    loaded = set(proc.stdout.split())
    assert {"ags_etl.loaders.geoparquet", "pyarrow.parquet", "pyarrow.json"} <= loaded  # the probe saw the pull
    assert sorted(m for m in loaded if any(m == name or m.startswith(f"{name}.") for name in LAZY_FOR_GEOPARQUET)) == []


def test_pandas_still_works_after_the_probe() -> None:
    code = (
        "import sys, ags_etl.batch, pyarrow as pa\n"
        "pa.array(['a'])\n"
        "assert 'pandas' not in sys.modules\n"
        "import pandas as pd\n"
        "assert pa.table({'a': [1, 2]}).to_pandas()['a'].tolist() == [1, 2]\n"
        "assert pa.array(pd.Series([1.0, float('nan')])).null_count == 1\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
