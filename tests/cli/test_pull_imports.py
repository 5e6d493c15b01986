"""A pull imports only what it uses: no pandas (pyarrow's pandas probe is settled without
it) and fiona only for shapefiles."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("imports")
    write_layer(d / "polygons.geojson", "polygons", 30)
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
