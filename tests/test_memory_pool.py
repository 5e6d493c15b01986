"""Arrow allocates with malloc in an ags_etl process, Parquet's writer included, unless the
environment names another pool (mimalloc held ~20 MB more resident in a GeoParquet pull)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

#: Writes a Parquet file after importing ags_etl, then prints the pool pyarrow uses and the
#: most the mimalloc pool ever held (0: nothing was allocated from it).
PROBE = (
    "import sys, ags_etl.batch, pyarrow as pa, pyarrow.parquet as pq\n"
    "pq.write_table(pa.table({'a': list(range(50_000)), 'b': [str(i) for i in range(50_000)]}), sys.argv[1],"
    " compression='zstd')\n"
    "print(pa.default_memory_pool().backend_name, pa.mimalloc_memory_pool().max_memory())\n"
)


def probe(out: Path, pool: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out)], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.fixture(autouse=True)
def needs_mimalloc() -> None:
    try:
        pa.mimalloc_memory_pool()
    except NotImplementedError:
        pytest.skip("this pyarrow is built without mimalloc")


def test_parquet_writer_allocates_nothing_from_mimalloc(tmp_path: Path) -> None:
    assert probe(tmp_path / "a.parquet", None) == ["system", "0"]


def test_a_pool_the_environment_names_wins(tmp_path: Path) -> None:
    backend, most = probe(tmp_path / "a.parquet", "mimalloc")
    assert backend == "mimalloc" and int(most) > 0
