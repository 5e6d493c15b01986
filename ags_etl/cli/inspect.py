"""``ags-etl inspect URL``: layer (or service) metadata, count, capabilities, paging plan."""

from __future__ import annotations

import json
from typing import Any

import click

from ags_etl.arcgis.client import ArcGISClient, display_url
from ags_etl.arcgis.auth import split_url_credentials
from ags_etl.cli._common import TIMEOUT, auth_options, build_auth, handle_errors, network_options
from ags_etl.crs import describe_crs
from ags_etl.errors import ArcGISError, NotALayerError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor, validate_url


def _service_summary(client: ArcGISClient, url: str) -> dict[str, Any]:
    data = client.get(url)
    out: dict[str, Any] = {"url": display_url(url)}
    for key in ("currentVersion", "serviceDescription", "capabilities", "maxRecordCount"):
        if data.get(key) not in (None, ""):
            out[key] = data[key]
    for key in ("layers", "tables"):
        if data.get(key):
            out[key] = [{"id": lyr.get("id"), "name": lyr.get("name")} for lyr in data[key]]
    if data.get("services") is not None:
        out["services"] = [{"name": s.get("name"), "type": s.get("type")} for s in data["services"]]
    if data.get("folders"):
        out["folders"] = data["folders"]
    return out


@click.command("inspect")
@click.argument("url")
@click.option("--where", help="Where clause for the count and plan.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--timeout", type=TIMEOUT, default=60.0, show_default=True, help="Seconds per request.")
@network_options
@auth_options
@handle_errors(writes_output=False)
def inspect_cmd(
    url: str,
    where: str | None,
    as_json: bool,
    timeout: float,
    max_response_mb: int,
    proxy: str | None,
    ca_bundle: str | None,
    token: str | None,
    api_key: str | None,
    username: str | None,
    password: str | None,
    token_url: str | None,
) -> None:
    """Show a layer's fields, count, capabilities and the paging strategy a pull would use."""
    url = validate_url(url)
    auth = build_auth(token, api_key, username, password, token_url, url=url)
    url = split_url_credentials(url)[0]  # the userinfo is never sent inside a URL
    with ArcGISClient(
        auth=auth, timeout=timeout, max_response_bytes=max_response_mb * 2**20, proxy=proxy, ca_bundle=ca_bundle
    ) as client:
        try:
            with FeatureLayerExtractor(url, where=where, client=client) as ext:
                assert ext.info is not None and ext.schema is not None
                plan = ext.plan()
                info = ext.info
                report: dict[str, Any] = {
                    "url": display_url(info.url),
                    "name": info.name,
                    "type": info.layer_type,
                    "currentVersion": info.current_version,
                    "geometryType": info.schema.geometry_type,
                    "crs": describe_crs(info.schema.crs),
                    "objectIdField": info.oid_field,
                    "maxRecordCount": info.max_record_count,
                    "supportsPagination": info.supports_pagination,
                    "supportsOrderBy": info.supports_order_by,
                    "supportsStatistics": info.supports_statistics,
                    "capabilities": sorted(info.capabilities),
                    "queryFormats": sorted(info.query_formats),
                    "count": plan.count,
                    "strategy": plan.strategy.value,
                    "strategyReason": plan.reason,
                    "pageSize": plan.page_size,
                    "responseFormat": ext.format_choice().reason,
                    # Only for a layer without a count (box-split): what completeness rests on.
                    **({"completeness": plan.unchecked} if plan.unchecked is not None else {}),
                    "fields": [{"name": f.name, "type": f.esri_type} for f in info.schema.fields],
                }
        except NotALayerError as not_a_layer:
            # Maybe a service, folder or catalog URL: show what it holds.
            try:
                report = _service_summary(client, url)
            except ArcGISError:
                raise not_a_layer from None
            if not any(key in report for key in ("layers", "tables", "services", "folders")):
                raise not_a_layer
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    for key, value in report.items():
        if key == "fields":
            click.echo("fields:")
            for f in value:
                click.echo(f"  {f['name']}: {f['type'].removeprefix('esriFieldType')}")
        elif key in ("layers", "tables", "services"):
            click.echo(f"{key}:")
            for item in value:
                click.echo("  " + " ".join(str(v) for v in item.values()))
        else:
            click.echo(f"{key}: {value}")
