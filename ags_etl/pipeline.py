"""Wire one extractor → transformers → one loader, with preflight checks and run statistics.

Order of work in :meth:`Pipeline.run`:

1. before any network call: the loader's preflight runs (a file sink: folder exists and is writable, no
   overwrite without leave) — everything else was validated when the parts were built;
2. layer metadata is read; each transformer is bound in order, giving the output
   schema; when the loader needs a CRS (GeoJSON/KMZ: EPSG:4326) and the stream is
   elsewhere, a reprojection is appended — unless the user asked for another CRS with
   a Reproject, which raises CapabilityError (before the first page); the loader's capabilities are checked
   against the final schema — all before the first page;
3. a clip's bbox is pushed to the server as an envelope filter;
4. pages stream through the transformers into the loader's temp output, which is
   renamed onto the target only after the extractor's completeness check passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ags_etl.batch import FeatureBatch
from ags_etl.extractors.feature_layer import ExtractStats, FeatureLayerExtractor
from ags_etl.loaders.base import LoadStats, Loader
from ags_etl.schema import LayerSchema
from ags_etl.transformers.base import Transformer

log = logging.getLogger(__name__)

#: Formats whose loaders take one CRS only, as named when another --t-srs is refused.
_FIXED_CRS_FORMATS = {
    "geojson": "GeoJSON (RFC 7946)",
    "geojsonl": "newline-delimited GeoJSON (RFC 7946 features)",
    "kmz": "KML/KMZ",
}


@dataclass
class RunResult:
    """What a run did (returned by :meth:`Pipeline.run`)."""

    extract: ExtractStats
    load: LoadStats
    schema: LayerSchema
    seconds: float
    transform_counters: dict[str, int] = field(default_factory=dict)

    @property
    def features(self) -> int:
        return self.load.features


class Pipeline:
    """One extractor, an ordered list of transformers, one loader."""

    def __init__(
        self,
        extractor: FeatureLayerExtractor,
        transformers: list[Transformer],
        loader: Loader,
        *,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        self.extractor = extractor
        self.transformers = list(transformers)
        self.loader = loader
        self.progress = progress
        #: Called with every extracted batch before the transformers (a sync job's cursor).
        self.observers: list[Callable[[FeatureBatch], None]] = []

    def _bind(self, schema: LayerSchema) -> LayerSchema:
        from ags_etl.registry import load

        for t in self.transformers:
            schema = t.bind(schema)
        required = self.loader.capabilities.required_crs
        if (
            required is not None
            and schema.geometry_type is not None
            and (schema.crs is None or not schema.crs.equals(required, ignore_axis_order=True))
        ):
            if schema.crs is None:
                return schema  # loader.check explains that the CRS is unknown
            asked = [crs for crs in (t.requested_crs() for t in self.transformers) if crs is not None]
            if asked:
                # The user asked for a CRS this format cannot hold: say so instead of
                # silently reprojecting on to the required CRS.
                from ags_etl.crs import describe_crs
                from ags_etl.errors import CapabilityError

                fmt = _FIXED_CRS_FORMATS.get(self.loader.name, self.loader.name)
                raise CapabilityError(
                    f"{fmt} holds {required.to_string()} coordinates only; --t-srs "
                    f"{describe_crs(asked[-1])} cannot be honoured: drop --t-srs (features are "
                    f"reprojected to {required.to_string()} automatically), or write GeoParquet (.parquet) "
                    f"or a shapefile (.shp), which keep any CRS"
                )
            log.info("%s needs %s: reprojecting from %s", self.loader.name, required.to_string(), schema.crs.name)
            auto = load("transformers", "reproject")(required)
            schema = auto.bind(schema)
            self.transformers.append(auto)
        return schema

    def _server_side(self) -> None:
        """Hand a leading server-side reprojection to the extractor as outSR."""
        if self.transformers:
            crs = self.transformers[0].server_side_crs()
            if crs is not None:
                self.extractor.out_crs = crs

    def run(self) -> RunResult:
        start = time.monotonic()
        self.loader.preflight()
        self._server_side()
        with self.extractor as ext:
            assert ext.schema is not None
            schema = self._bind(ext.schema)
            self.loader.check(schema)
            for t in self.transformers:
                sf = t.spatial_filter()
                if sf is not None:
                    ext.spatial_filter = sf
                    break
                if not t.keeps_geometry_position:
                    break
            plan = ext.plan()
            done = 0
            with self.loader.open(schema) as writer:
                for batch in ext:
                    for observe in self.observers:
                        observe(batch)
                    for t in self.transformers:
                        batch = t(batch)
                    if len(batch):
                        writer.write(batch)
                    done += len(batch)
                    if self.progress is not None:
                        self.progress(done, plan.count)
            load_stats = writer.stats  # read after the output is committed: final outputs and warnings
        counters: dict[str, int] = {}
        for t in self.transformers:
            for k, v in t.close().items():
                counters[k] = counters.get(k, 0) + v
        return RunResult(ext.stats, load_stats, schema, time.monotonic() - start, counters)


