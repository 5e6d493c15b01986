"""Plugins: a third-party transformer pip-installed (offline, into a --target folder) is listed by
`ags-etl plugins` with its distribution and runs in a pipeline file; the built-ins come from our
own entry points; classes without an options model are refused with a clear error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path

import geopandas
import pytest

from ags_etl import registry
from ags_etl.config import PipelineFileError, parse_pipeline
from ags_etl.server.testing import run_server
from tests.cli.helpers import ags
from tests.layers import expected_rows, write_layer

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE = ROOT / "tests" / "plugins" / "uppercase"
N = 30


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package installed with pip, offline, into a folder of its own."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN_SOURCE, work / "src")
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return target


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("plugin-layer")
    write_layer(d / "polygons.geojson", "polygons", N)
    with run_server(d) as base:
        yield f"{base}/arcgis/rest/services/polygons/FeatureServer/0"


def with_plugin(plugin_path: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)])}


def test_plugins_lists_builtins_and_the_installed_plugin(plugin_path: Path) -> None:
    proc = ags("plugins", env=with_plugin(plugin_path))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert ["transformer", "uppercase", "ags-etl-uppercase", "0.3.1", "ags_etl_uppercase:Uppercase"] in rows
    assert ["extractor", "arcgis", "built-in", "ags_etl.extractors.feature_layer:FeatureLayerExtractor"] in rows
    assert ["loader", "kmz", "built-in", "ags_etl.loaders.kmz:KMZLoader"] in rows
    # Without the plugin folder on the path, it is gone: nothing was installed into the venv.
    assert "uppercase" not in ags("plugins").stdout


def test_a_pipeline_file_runs_the_plugin(plugin_path: Path, layer: str, tmp_path: Path) -> None:
    out = tmp_path / "upper.parquet"
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        "version: 1\njobs:\n  - name: upper\n    source: {url: " + layer + "}\n"
        "    transforms:\n      - {type: uppercase, field: NAME}\n"
        "    sink: {type: geoparquet, path: " + str(out) + "}\n",
        encoding="utf-8",
    )
    env = with_plugin(plugin_path)
    proc = ags("validate", str(pipeline), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{pipeline}: valid (1 job: upper)"
    run = subprocess.run(
        [sys.executable, "-c",
         "import sys; from ags_etl.config import load_pipeline; from ags_etl.build import build_pipeline; "
         "build_pipeline(load_pipeline(sys.argv[1]).jobs[0]).run()", str(pipeline)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )
    assert run.returncode == 0, run.stderr
    df = geopandas.read_parquet(out)
    expected = expected_rows("polygons", N)
    assert len(df) == N
    for oid, name in zip(df["OBJECTID"].astype(int), df["NAME"], strict=True):
        want = expected[oid]["NAME"]
        assert (name if isinstance(name, str) else None) == (None if want is None else want.upper())
    # A wrong option of the plugin is checked by its own options model.
    pipeline.write_text(pipeline.read_text().replace("field: NAME", "feild: NAME"), encoding="utf-8")
    proc = ags("validate", str(pipeline), env=env)
    assert proc.returncode == 78
    assert f"{pipeline}:6: job 'upper': transforms[0].feild: unknown key 'feild' (did you mean 'field'?)" in proc.stderr


def test_a_class_without_options_model_is_refused() -> None:
    data = {"version": 1, "jobs": [{
        "name": "x", "source": {"url": "http://127.0.0.1:9/arcgis/rest/services/a/FeatureServer/0"},
        "transforms": [{"type": "ags_etl.transformers.base:Transformer"}],
        "sink": {"type": "geoparquet", "path": "x.parquet"},
    }]}
    with pytest.raises(PipelineFileError, match=r"transforms\[0\]\.type: transformer 'ags_etl.transformers.base:Transformer' "
                       r"\(ags_etl.transformers.base.Transformer\) declares no options model; its author must add"):
        parse_pipeline(data)


def test_builtins_come_from_our_entry_points() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    for kind in registry.KINDS:
        assert declared[f"ags_etl.{kind}"] == registry.FALLBACK[kind], kind
        installed = {ep.name: ep.value for ep in distribution("ags_etl").entry_points if ep.group == f"ags_etl.{kind}"}
        assert installed == registry.FALLBACK[kind], f"reinstall ags_etl (pip install -e .): {kind} metadata is stale"
        assert all(p.builtin for p in registry.plugins(kind))
        for name, target in registry.FALLBACK[kind].items():
            assert registry.load(kind, name) is registry.load(kind, target)
            if kind != "extractors":  # the arcgis extractor's options are SourceSpec's own keys
                model = registry.options_model(registry.load(kind, name), kind, name)
                assert model.model_config.get("extra") == "forbid"


def test_extensions_come_from_loader_capabilities() -> None:
    for name in registry.names("loaders"):
        for ext in registry.load("loaders", name).capabilities.extensions:
            assert registry.loader_name_for_path(f"x{ext}") == name
