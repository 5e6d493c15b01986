"""The local FeatureServer behind ``ags-etl serve DIR``.

Each GeoJSON, shapefile or GeoParquet file of DIR is loaded into SQLite at
start-up and served as ``/arcgis/rest/services/<name>/FeatureServer/0``, with
ArcGIS Server's URLs, JSON shapes, paging rules and error bodies. Switches make
it a harder server (page caps, no pagination, latency, failures, tokens) for
testing extraction pipelines offline. It binds 127.0.0.1 unless told otherwise.

Modules: sources (reading files), storage (SQLite + guarded readers), where
(where-clause guard), spatialref, metadata, query, auth, faults, protocol
(parameters, error bodies), app (HTTP, lifecycle), testing (``run_server``).
"""
