"""Fields: select / drop / rename / cast / decode_domains, output schema and the errors."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import shapely

from ags_etl.batch import FeatureBatch
from ags_etl.errors import ConfigError, TransformError
from ags_etl.schema import Field, LayerSchema
from ags_etl.transformers.fields import Fields, esri_type_for_name

USE_DOMAIN = {
    "type": "codedValue",
    "name": "LandUse",
    "codedValues": [{"name": "Residential", "code": 1}, {"name": "Commercial", "code": 2}, {"name": "Parc de l'Étoile", "code": 0}],
}
STATUS_DOMAIN = {"type": "codedValue", "name": "Status", "codedValues": [{"name": "Active", "code": "A"}, {"name": "Retired", "code": "R"}]}
RANGE_DOMAIN = {"type": "range", "name": "Height", "range": [0, 100]}

UTC = dt.UTC


def schema() -> LayerSchema:
    return LayerSchema(
        fields=(
            Field("OBJECTID", "esriFieldTypeOID", alias="Object ID"),
            Field("PARCEL_ID", "esriFieldTypeString", alias="Parcel", length=12),
            Field("USE_CODE", "esriFieldTypeSmallInteger", domain=USE_DOMAIN),
            Field("STATUS", "esriFieldTypeString", length=1, domain=STATUS_DOMAIN),
            Field("HEIGHT", "esriFieldTypeDouble", domain=RANGE_DOMAIN),
            Field("AREA_TXT", "esriFieldTypeString", length=20),
            Field("EditDate", "esriFieldTypeDate"),
            Field("Shape", "esriFieldTypeGeometry"),
        ),
        oid_field="OBJECTID",
        geometry_type="esriGeometryPoint",
        name="parcels",
    )


def make_batch(s: LayerSchema | None = None) -> FeatureBatch:
    s = s or schema()
    # two chunks, as concatenated pages would give
    data = {
        "OBJECTID": [[1, 2], [3, 4]],
        "PARCEL_ID": [["0001", "0002"], [None, "0004"]],
        "USE_CODE": [[1, 2], [None, 7]],  # 7 is not in the domain
        "STATUS": [["A", "R"], ["A", None]],
        "HEIGHT": [[1.5, 0.0], [None, 99.0]],
        "AREA_TXT": [["12.5", "0"], [None, "-3"]],
        "EditDate": [
            [dt.datetime(1969, 12, 31, 23, 59, tzinfo=UTC), dt.datetime(2020, 1, 1, tzinfo=UTC)],
            [None, dt.datetime(2024, 2, 29, 12, 30, tzinfo=UTC)],
        ],
    }
    arrow = s.arrow_schema()
    columns = [pa.chunked_array(data[f.name], type=arrow.field(f.name).type) for f in s.attribute_fields]
    table = pa.Table.from_arrays(columns, schema=arrow)
    g = np.array([shapely.Point(0, 0), None, shapely.Point(1, 1), shapely.Point(2, 2)], dtype=object)
    return FeatureBatch(table, g, None)


def run(t: Fields, b: FeatureBatch | None = None) -> tuple[LayerSchema, FeatureBatch]:
    out_schema = t.bind(schema())
    out = t(b or make_batch())
    assert out.attributes.schema == out_schema.arrow_schema()  # batches follow the output schema
    return out_schema, out


def test_select_keeps_order_and_geometry() -> None:
    b = make_batch()
    out_schema, out = run(Fields(select=["STATUS", "OBJECTID", "EditDate"]), b)
    assert out.column_names == ["STATUS", "OBJECTID", "EditDate"]
    assert [f.name for f in out_schema.fields] == ["STATUS", "OBJECTID", "EditDate"]
    assert out_schema.oid_field == "OBJECTID"
    assert out.column("STATUS").to_pylist() == ["A", "R", "A", None]
    assert out.geometry is b.geometry
    # dates stay timestamp[ms, UTC], values untouched (one before 1970)
    assert out.column("EditDate").type == pa.timestamp("ms", tz="UTC")
    assert out.column("EditDate").equals(b.column("EditDate"))


def test_select_without_oid_sets_oid_field_none() -> None:
    out_schema, out = run(Fields(select=["PARCEL_ID"]))
    assert out_schema.oid_field is None
    assert out.column_names == ["PARCEL_ID"]
    assert out_schema.field_names == ["PARCEL_ID"]


def test_drop_keeps_the_rest_and_the_geometry_field() -> None:
    out_schema, out = run(Fields(drop=["HEIGHT", "AREA_TXT"]))
    assert out.column_names == ["OBJECTID", "PARCEL_ID", "USE_CODE", "STATUS", "EditDate"]
    assert out_schema.fields[-1].name == "Shape"


def test_rename_moves_the_oid_field_and_keeps_aliases() -> None:
    out_schema, out = run(Fields(rename={"OBJECTID": "oid", "PARCEL_ID": "parcel_id"}))
    assert out_schema.oid_field == "oid"
    assert out.column_names[:2] == ["oid", "parcel_id"]
    f = out_schema.field("parcel_id")
    assert (f.alias, f.length, f.esri_type) == ("Parcel", 12, "esriFieldTypeString")
    assert out.column("oid").to_pylist() == [1, 2, 3, 4]


def test_rename_to_swap_names_is_allowed() -> None:
    out_schema, out = run(Fields(rename={"STATUS": "AREA_TXT", "AREA_TXT": "STATUS"}, select=["STATUS", "AREA_TXT"]))
    assert out.column_names == ["AREA_TXT", "STATUS"]
    assert [f.length for f in out_schema.fields] == [1, 20]  # field definitions travel with the values
    assert out.column("AREA_TXT").to_pylist() == ["A", "R", "A", None]


@pytest.mark.parametrize(
    "name, target, values",
    [
        ("AREA_TXT", "double", [12.5, 0.0, None, -3.0]),
        ("USE_CODE", "bigint", [1, 2, None, 7]),
        ("USE_CODE", "string", ["1", "2", None, "7"]),
        ("HEIGHT", "esriFieldTypeSingle", [1.5, 0.0, None, 99.0]),
        ("EditDate", "bigint", [-60_000, 1_577_836_800_000, None, 1_709_209_800_000]),
    ],
)
def test_cast(name: str, target: str, values: list[object]) -> None:
    out_schema, out = run(Fields(cast={name: target}))
    f = out_schema.field(name)
    assert f.esri_type == esri_type_for_name(target)
    assert f.domain is None  # a domain's codes belong to the old type
    assert out.column(name).type == f.arrow_type
    assert out.column(name).to_pylist() == values


def test_cast_date_from_epoch_ms_and_text() -> None:
    s = LayerSchema(
        fields=(Field("MS", "esriFieldTypeBigInteger"), Field("TXT", "esriFieldTypeString")),
        geometry_type=None,
    )
    table = pa.table({"MS": pa.array([0, -86_400_000, None], pa.int64()), "TXT": ["2020-01-01T00:00:00Z", "2020-01-02 03:04:05", None]})
    t = Fields(cast={"MS": "date", "TXT": "datetime"})
    out_schema = t.bind(s)
    out = t(FeatureBatch(table, None, None))
    assert out_schema.field("MS").esri_type == "esriFieldTypeDate"
    assert out.column("MS").type == pa.timestamp("ms", tz="UTC")
    assert out.column("MS").to_pylist() == [dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(1969, 12, 31, tzinfo=UTC), None]
    # text without a zone offset is read as UTC
    assert out.column("TXT").to_pylist() == [dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC), None]


def test_failing_cast_names_field_value_and_fix() -> None:
    t = Fields(cast={"PARCEL_ID": "int"})
    t.bind(schema())
    b = make_batch()
    table = b.attributes.set_column(1, "PARCEL_ID", pa.chunked_array([["1", "2"], ["3", "12-B"]]))
    with pytest.raises(TransformError) as info:
        t(FeatureBatch(table, b.geometry, None))
    msg = str(info.value)
    assert "'PARCEL_ID'" in msg and "'12-B'" in msg and "int32" in msg and "cast to 'string'" in msg


def test_lossy_float_to_int_cast_fails_with_the_value() -> None:
    t = Fields(cast={"HEIGHT": "int"})
    t.bind(schema())
    with pytest.raises(TransformError, match=r"value 1\.5"):
        t(make_batch())


def test_cast_type_names() -> None:
    assert esri_type_for_name("int") == "esriFieldTypeInteger"
    assert esri_type_for_name("BIGINT") == "esriFieldTypeBigInteger"
    assert esri_type_for_name("esriFieldTypeDouble") == "esriFieldTypeDouble"
    assert esri_type_for_name("SmallInteger") == "esriFieldTypeSmallInteger"
    assert esri_type_for_name("date") == "esriFieldTypeDate"
    with pytest.raises(ConfigError, match="'varchar'.*'int'"):
        esri_type_for_name("varchar")
    with pytest.raises(ConfigError):
        esri_type_for_name("OID")  # assigned by the server, not a cast target


def test_decode_all_coded_domains() -> None:
    t = Fields(decode_domains=True)
    out_schema, out = run(t)
    assert out.column("USE_CODE").to_pylist() == ["Residential", "Commercial", None, "7"]
    assert out.column("STATUS").to_pylist() == ["Active", "Retired", "Active", None]
    f = out_schema.field("USE_CODE")
    assert (f.esri_type, f.domain, f.length) == ("esriFieldTypeString", None, len("Parc de l'Étoile"))
    # range domains are not decoded
    assert out_schema.field("HEIGHT").esri_type == "esriFieldTypeDouble"
    assert out.column("HEIGHT").to_pylist() == [1.5, 0.0, None, 99.0]
    assert t.close() == {"fields_undecoded": 1}


def test_decode_code_zero_and_listed_fields_only() -> None:
    t = Fields(decode_domains=["USE_CODE"], rename={"USE_CODE": "use"})
    b = make_batch()
    table = b.attributes.set_column(2, "USE_CODE", pa.chunked_array([[0, 0], [1, None]], pa.int16()))
    t.bind(schema())
    out = t(FeatureBatch(table, b.geometry, None))
    assert out.column("use").to_pylist() == ["Parc de l'Étoile", "Parc de l'Étoile", "Residential", None]
    assert out.column("STATUS").to_pylist() == ["A", "R", "A", None]
    assert t.close() == {"fields_undecoded": 0}


def test_no_decode_no_counters() -> None:
    t = Fields(select=["OBJECTID"])
    run(t)
    assert t.close() == {}


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"select": ["PARCELID"]}, ["'PARCELID'", "select", "'PARCEL_ID'", "available fields"]),
        ({"select": ["parcel_id"]}, ["'parcel_id'", "case-sensitive"]),
        ({"drop": ["NOPE"]}, ["'NOPE'", "drop", "available fields"]),
        ({"rename": {"NOPE": "x"}}, ["'NOPE'", "rename"]),
        ({"cast": {"NOPE": "int"}}, ["'NOPE'", "cast"]),
        ({"decode_domains": ["NOPE"]}, ["'NOPE'", "decode_domains"]),
        ({"select": ["Shape"]}, ["'Shape'", "geometry"]),
        ({"decode_domains": ["HEIGHT"]}, ["'HEIGHT'", "no coded-value domain"]),
        ({"decode_domains": ["PARCEL_ID"]}, ["'PARCEL_ID'", "no coded-value domain"]),
        ({"rename": {"STATUS": "PARCEL_ID"}}, ["PARCEL_ID", "more than one field"]),
        ({"rename": {"STATUS": "Shape"}}, ["Shape", "geometry"]),
        ({"cast": {"OBJECTID": "string"}}, ["'OBJECTID'", "OID"]),
        ({"select": ["OBJECTID"], "rename": {"STATUS": "s"}}, ["['STATUS']", "select/drop remove"]),
        ({"drop": ["STATUS"], "cast": {"STATUS": "int"}}, ["['STATUS']", "select/drop remove"]),
    ],
)
def test_bind_errors(kwargs: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Fields(**kwargs).bind(schema())
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"select": "PARCEL_ID"}, "list of field names"),
        ({"select": ["A", "A"]}, "more than once"),
        ({"select": [""]}, "not field names"),
        ({"rename": ["A"]}, "mapping"),
        ({"rename": {"A": ""}}, "non-empty"),
        ({"cast": {"A": "varchar"}}, "'varchar'"),
        ({"cast": {"USE_CODE": "string"}, "decode_domains": ["USE_CODE"]}, "both cast and domain-decoded"),
    ],
)
def test_construction_errors(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        Fields(**kwargs)


def test_bad_domain_codes_are_a_bind_error() -> None:
    bad = {"type": "codedValue", "codedValues": [{"name": "x", "code": "not-a-number"}]}
    s = LayerSchema(fields=(Field("N", "esriFieldTypeInteger", domain=bad),), geometry_type=None)
    with pytest.raises(ConfigError, match="'N'"):
        Fields(decode_domains=["N"]).bind(s)


def test_string_codes_for_an_integer_field_are_cast() -> None:
    dom = {"type": "codedValue", "codedValues": [{"name": "one", "code": "1"}, {"name": "two", "code": "2"}]}
    s = LayerSchema(fields=(Field("N", "esriFieldTypeInteger", domain=dom),), geometry_type=None)
    t = Fields(decode_domains=True)
    t.bind(s)
    out = t(FeatureBatch(pa.table({"N": pa.array([2, 1, None], pa.int32())}), None, None))
    assert out.column("N").to_pylist() == ["two", "one", None]


def test_empty_batch() -> None:
    t = Fields(select=["USE_CODE"], decode_domains=True)
    out_schema = t.bind(schema())
    b = make_batch()
    out = t(b.filter(np.zeros(len(b), dtype=bool)))
    assert len(out) == 0 and out.attributes.schema == out_schema.arrow_schema()


def test_input_batch_is_not_modified() -> None:
    b = make_batch()
    snapshot = b.attributes
    run(Fields(cast={"USE_CODE": "string"}, rename={"STATUS": "st"}, decode_domains=["STATUS"]), b)
    assert b.attributes is snapshot and b.column_names[3] == "STATUS"
    assert b.column("USE_CODE").type == pa.int16()


def test_failing_text_to_date_cast_names_the_bad_value_not_a_naive_one() -> None:
    s = LayerSchema(fields=(Field("TXT", "esriFieldTypeString"),), geometry_type=None)
    t = Fields(cast={"TXT": "date"})
    t.bind(s)
    table = pa.table({"TXT": ["2020-01-02 03:04:05", "2020-01-01T00:00:00+02:00", "yesterday", None]})
    with pytest.raises(TransformError, match="'yesterday'"):
        t(FeatureBatch(table, None, None))
    ok = t(FeatureBatch(table.slice(0, 2), None, None)).column("TXT").to_pylist()
    assert ok == [dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC), dt.datetime(2019, 12, 31, 22, tzinfo=UTC)]
