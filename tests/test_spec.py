"""The typed spec from Python: construction, secrets, auth forms, and check_job's verdicts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ags_etl.arcgis.auth import ApiKeyAuth, NoAuth, TokenAuth, UserPasswordAuth
from ags_etl.build import build_auth
from ags_etl.spec import AuthSpec, JobSpec, SinkSpec, SourceSpec, TransformSpec, check_job

URL = "http://127.0.0.1:9/arcgis/rest/services/P/FeatureServer/0"


def test_jobspec_from_python_and_from_a_dict_agree() -> None:
    made = JobSpec(
        name="p",
        source=SourceSpec(url=URL, where="A = 1", page_size=100),
        transforms=[TransformSpec(type="reproject", to="EPSG:3857")],
        sink=SinkSpec(type="geoparquet", path="p.parquet", row_group_size=10),
    )
    parsed = JobSpec.model_validate({
        "name": "p",
        "source": {"url": URL, "where": "A = 1", "page_size": 100},
        "transforms": [{"type": "reproject", "to": "EPSG:3857"}],
        "sink": {"type": "geoparquet", "path": "p.parquet", "row_group_size": 10},
    })
    assert made == parsed
    assert made.transforms[0].options == {"to": "EPSG:3857"} and made.sink.options == {"row_group_size": 10}
    assert made.source.concurrency == 4 and made.source.response_format == "json" and made.sync is None
    assert check_job(made) == []


def test_secrets_do_not_print() -> None:
    auth = AuthSpec(username="me", password="pa55word-secret")
    source = SourceSpec(url=URL, auth=auth)
    assert "pa55word-secret" not in repr(source) and "pa55word-secret" not in str(source.model_dump())
    with pytest.raises(ValidationError) as info:
        AuthSpec(token="tok-secret-1", api_key="key-secret-2")
    assert "tok-secret-1" not in str(info.value) and "key-secret-2" not in str(info.value)


@pytest.mark.parametrize(
    "auth, kind",
    [(None, NoAuth), (AuthSpec(token="t"), TokenAuth), (AuthSpec(api_key="k"), ApiKeyAuth),
     (AuthSpec(username="u", password="p", token_url="https://h/tokens/generateToken"), UserPasswordAuth)],
)
def test_auth_forms(auth: AuthSpec | None, kind: type) -> None:
    assert isinstance(build_auth(auth), kind)


@pytest.mark.parametrize(
    "fields, message",
    [({}, "give exactly one of"), ({"username": "u"}, "username and password go together"),
     ({"token": "t", "api_key": "k"}, "got token and api_key")],
)
def test_auth_needs_exactly_one_form(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuthSpec(**fields)


def test_source_needs_url_or_item_and_portal_goes_with_item() -> None:
    with pytest.raises(ValidationError, match="exactly one of url"):
        SourceSpec()
    with pytest.raises(ValidationError, match="portal goes with item"):
        SourceSpec(url=URL, portal="https://www.arcgis.com")
    assert SourceSpec(item="abc", portal="https://www.arcgis.com").multi_layer
    assert not SourceSpec(url=URL, layers=[3]).multi_layer
    assert SourceSpec(url=URL, layers=["Parcel*"]).multi_layer and SourceSpec(url=URL, layers=[1, 2]).multi_layer


def test_check_job_verdicts() -> None:
    def job(*transforms: TransformSpec, sink: SinkSpec, **source: object) -> JobSpec:
        return JobSpec(name="j", source=SourceSpec(url=URL, **source), transforms=list(transforms), sink=sink)

    # A {layer} placeholder on a single-layer source is fine; GeoJSON after a reproject to 4326 too.
    assert check_job(job(TransformSpec(type="reproject", to=4326), sink=SinkSpec(type="geojson", path="{layer}.geojson"))) == []
    found = check_job(job(TransformSpec(type="clip", bbox="0,0,1,1", crs="EPSG:9999999"), sink=SinkSpec(type="geojsonl")))
    assert [str(i).split(":")[0] for i in found] == ["transforms[0].crs", "sink.path"]
    found = check_job(job(sink=SinkSpec(type="geoparquet", path="x.parquet"), colour="red"))
    assert len(found) == 1 and str(found[0]).startswith("source.colour: unknown key 'colour'")
    found = check_job(job(TransformSpec(type="clip", mask="/no/such/mask.geojson"), sink=SinkSpec(type="geoparquet", path="x.parquet")))
    assert len(found) == 1 and "clip mask file '/no/such/mask.geojson' does not exist" in str(found[0])
