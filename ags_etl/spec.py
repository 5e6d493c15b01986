"""The typed pipeline specification: what a pipeline file (or a Python caller) asks for.

Pydantic v2 models, ``extra="forbid"`` at every depth. Three models take keys beyond their
own, validated by the plugin they name: :class:`TransformSpec` (the transformer's options),
:class:`SinkSpec` (the loader's options) and :class:`SourceSpec` (a third-party
extractor's options; the built-in ``arcgis`` extractor takes none). Those keys are checked
by :func:`check_job`, a pure function that also checks what only the registry knows
(plugin names, each plugin's ``Options`` model) and what the parts of a job imply for each
other (a sink that cannot hold the source). Nothing here makes a network request.

Built from Python::

    job = JobSpec(
        name="parcels",
        source=SourceSpec(url="https://host/arcgis/rest/services/P/FeatureServer/0", where="ST = 'A'"),
        transforms=[TransformSpec(type="reproject", to="EPSG:3857")],
        sink=SinkSpec(type="geoparquet", path="out/parcels.parquet", overwrite=True),
    )
    problems = check_job(job)   # [] when it can be built

Secrets (``auth``, ``source.proxy``) are :class:`pydantic.SecretStr`: they print as ``**********``.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)

from ags_etl.arcgis.paging import Strategy
from ags_etl.errors import ConfigError

__all__ = [
    "AuthSpec",
    "Issue",
    "JobSpec",
    "PipelineSpec",
    "SinkSpec",
    "SourceSpec",
    "SyncSpec",
    "TransformSpec",
    "check_job",
    "check_pipeline",
    "duplicate_names",
    "issues_from_error",
    "make_plugin",
    "validate_job_data",
]

#: Path of a key inside a job or a pipeline: ("source", "auth", "token"), ("transforms", 0, "to").
Loc = tuple[str | int, ...]

#: Placeholder in a sink path filled with each layer's name when a source gives several layers.
LAYER_PLACEHOLDER = "{layer}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuthSpec(_Strict):
    """Exactly one of ``{username, password}``, ``{token}`` or ``{api_key}``; ``token_url``
    optionally names the token endpoint for username/password."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    api_key: SecretStr | None = None
    token_url: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> AuthSpec:
        forms = [
            name
            for name, given in (
                ("username/password", self.username is not None or self.password is not None),
                ("token", self.token is not None),
                ("api_key", self.api_key is not None),
            )
            if given
        ]
        if len(forms) != 1:
            got = f"got {' and '.join(forms)}" if forms else "got none"
            raise ValueError(f"give exactly one of {{username, password}}, {{token}} or {{api_key}} ({got})")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together; give both")
        return self


class SourceSpec(BaseModel):
    """Where features come from. For ``type: arcgis`` (the default): exactly one of ``url`` (a
    layer, service, folder or services root) and ``item`` (a portal item id, with ``portal``
    the portal's URL); ``layers`` selects layers of a service by id or by case-insensitive
    wildcard over their names. Other keys are a third-party extractor's options."""

    model_config = ConfigDict(extra="allow")

    type: str = "arcgis"
    url: str | None = None
    where: str | None = None
    fields: list[str] | None = None
    auth: AuthSpec | None = None
    page_size: PositiveInt | None = None
    concurrency: PositiveInt = 4
    strategy: Strategy | None = None
    timeout: PositiveFloat = 60.0
    retries: NonNegativeInt = 5
    max_response_mb: PositiveInt = 256
    proxy: SecretStr | None = None  # may hold user:pass@, so a secret
    ca_bundle: str | None = None
    response_format: Literal["json", "geojson", "pbf", "auto"] = "json"
    layers: list[int | str] | None = Field(default=None, min_length=1)
    item: str | None = None
    portal: str | None = None

    @model_validator(mode="after")
    def _url_or_item(self) -> SourceSpec:
        if self.type == "arcgis":
            if (self.url is None) == (self.item is None):
                raise ValueError("give exactly one of url (a layer or service URL) and item (a portal item id)")
            if self.portal is not None and self.item is None:
                raise ValueError("portal goes with item; give item: <item id>, or drop portal")
        return self

    @property
    def options(self) -> dict[str, Any]:
        """Keys beyond the built-in ones (a third-party extractor's options)."""
        return dict(self.model_extra or {})

    @property
    def multi_layer(self) -> bool:
        """True when the source may give several layers (a portal item, or ``layers`` with a
        wildcard or more than one entry)."""
        if self.item is not None:
            return True
        if self.layers is None:
            return False
        return len(self.layers) > 1 or any(isinstance(s, str) for s in self.layers)


class TransformSpec(BaseModel):
    """One transform: ``type`` names a transformer; every other key is one of its options."""

    model_config = ConfigDict(extra="allow")

    type: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SinkSpec(BaseModel):
    """Where features go: ``type`` names a loader; ``path`` its target (``{layer}`` is filled per
    layer for multi-layer sources); ``overwrite`` replaces an existing target once the new one is
    complete; every other key is one of the loader's options."""

    model_config = ConfigDict(extra="allow")

    type: str
    path: str | None = None
    overwrite: bool = False

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SyncSpec(_Strict):
    """Incremental sync of a job (see :mod:`ags_etl.sync`): ``cursor_field`` (required) an
    editor-tracking date or a field that grows on every edit; ``lag`` the overlap read again
    each run (``30s``, ``5m``, ``2h``, ``1d`` or seconds; for a numeric cursor, in the field's
    units); ``initial_value`` the cursor of the first run (a date text or a number; default:
    read everything); ``detect_deletes`` drop from the target the keys the source no longer
    has; ``key`` the field matching rows of the target (default: the layer's OID field)."""

    cursor_field: str = Field(min_length=1)
    lag: str | int | float | None = None
    initial_value: str | int | float | None = None
    detect_deletes: bool = False
    key: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _values(self) -> SyncSpec:
        from ags_etl.sync import parse_initial_value, parse_lag

        parse_lag(self.lag)  # ValueError naming the value and the accepted forms
        parse_initial_value(self.initial_value)
        return self


class JobSpec(_Strict):
    """One source, its transforms in order, one sink."""

    name: str = Field(min_length=1)
    source: SourceSpec
    transforms: list[TransformSpec] = Field(default_factory=list)
    sink: SinkSpec
    sync: SyncSpec | None = None
    #: Keep completed pages in ``.<target name>.resume/`` beside the sink's file and reuse them
    #: when the same job is run again after a kill (see ags_etl.extractors.staging).
    resume: bool = False
    #: Where page tasks run (see ags_etl.cluster): None takes the pipeline's, then ``threads``.
    executor: Literal["threads", "dask"] | None = None
    scheduler: str | None = None
    max_requests_per_host: PositiveInt | None = None


class PipelineSpec(_Strict):
    """A whole pipeline file. ``defaults`` were already merged into each job; ``path`` is the
    file it came from (None when built from Python). ``executor``, ``scheduler`` and
    ``max_requests_per_host`` apply to every job that does not set its own."""

    version: Literal[1]
    jobs: list[JobSpec] = Field(min_length=1)
    defaults: dict[str, Any] | None = None
    state: str | None = None
    executor: Literal["threads", "dask"] | None = None
    scheduler: str | None = None
    max_requests_per_host: PositiveInt | None = None
    _path: Path | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path | None:
        return self._path

    @path.setter
    def path(self, value: Path | None) -> None:
        self._path = value


# ---------------------------------------------------------------------------- issues


@dataclass(frozen=True)
class Issue:
    """One problem: where (a key path relative to the job, or the pipeline) and what to do."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{dotted(self.loc)}: {self.message}" if self.loc else self.message


def dotted(loc: Loc) -> str:
    """``("transforms", 0, "to")`` → ``transforms[0].to``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X | None``, ``list[X]`` and the like."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, Sequence):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _accepted_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model found at ``loc`` below ``model`` (walking nested models)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        current = None if info is None else _model_in(info.annotation)
    return [] if current is None else list(current.model_fields)


def _clean_loc(loc: Sequence[str | int], data: Any) -> Loc:
    """Pydantic's ``loc`` without its union-member tags, by walking the input ``data``."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):  # noqa: SIM114 - narrows part to int
            out.append(part)
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, Mapping) and isinstance(part, str) and not _is_tag(part):
            out.append(part)  # a missing key
            node = None
        else:
            continue  # a union member's tag such as 'int', 'str', 'list[float]'
    return tuple(out)


def _is_tag(part: str) -> bool:
    return "[" in part or part in {"int", "str", "float", "bool", "dict", "list", "none"}


def _shown(value: Any) -> str | None:
    """A short rendering of a scalar input, or None when it should not be echoed."""
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 60):
        return repr(value)
    return None


def issues_from_error(
    exc: ValidationError,
    data: Any,
    *,
    model: type[BaseModel],
    prefix: Loc = (),
    extra_keys: Sequence[str] = (),
) -> list[Issue]:
    """One :class:`Issue` per key path of a pydantic ValidationError, saying what is accepted.

    ``data`` is what was validated (used to drop union tags from ``loc``); ``model`` the model it
    was validated against (for the accepted keys); ``extra_keys`` keys accepted besides the
    model's (``type``, ``path`` … of the spec that holds plugin options). Inputs under ``auth``
    are never echoed.
    """
    grouped: dict[Loc, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"], data)
        secret = "auth" in loc
        kind = err["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            accepted = sorted(set(_accepted_keys(model, loc[:-1])) | set(extra_keys if len(loc) == 1 else ()))
            hint = difflib.get_close_matches(key, accepted, n=1)
            msg = f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
            msg += f"; accepted keys: {', '.join(accepted)}" if accepted else ""
        elif kind == "missing":
            msg = "required, but missing"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            shown = None if secret else _shown(err.get("input"))
            if shown is not None and kind != "value_error":
                msg += f" (got {shown})"
        msgs = grouped.setdefault(prefix + loc, [])
        if msg not in msgs:
            msgs.append(msg)
    return [Issue(loc, "; or ".join(msgs)) for loc, msgs in grouped.items()]


# ---------------------------------------------------------------------------- checks


def make_plugin(kind: str, name: str, options: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
    """Validate ``options`` with the plugin's ``Options`` model and build the plugin.

    ``cls.from_options(options_model, *args, **kwargs)`` when the class defines it, else
    ``cls(*args, **kwargs, **<the keys given, validated>)``. Raises ConfigError (unknown
    name, no options model, bad options, or the constructor's own ConfigError).
    """
    from ags_etl.registry import load, options_model

    cls = load(kind, name)
    model = options_model(cls, kind, name)
    try:
        opts = model.model_validate(dict(options))
    except ValidationError as exc:
        issues = issues_from_error(exc, dict(options), model=model)
        raise ConfigError(f"{kind[:-1]} {name!r}: " + "; ".join(str(i) for i in issues)) from exc
    factory = getattr(cls, "from_options", None)
    if factory is not None:
        return factory(opts, *args, **kwargs)
    return cls(*args, **kwargs, **opts.model_dump(exclude_unset=True))


def _plugin_issues(kind: str, name: str, options: Mapping[str, Any], at: Loc, base_keys: Sequence[str]) -> tuple[Any, list[Issue]]:
    """(the plugin's class or None, problems with its name or options)."""
    from ags_etl.registry import load, options_model

    try:
        cls = load(kind, name)
        model = options_model(cls, kind, name)
    except ConfigError as exc:
        return None, [Issue((*at, "type"), str(exc))]
    try:
        model.model_validate(dict(options))
    except ValidationError as exc:
        return cls, issues_from_error(exc, dict(options), model=model, prefix=at, extra_keys=base_keys)
    return cls, []


def _source_issues(source: SourceSpec) -> list[Issue]:
    if source.type != "arcgis":
        return _plugin_issues("extractors", source.type, source.options, ("source",), list(SourceSpec.model_fields))[1]
    accepted = sorted(SourceSpec.model_fields)
    issues = []
    for key in source.options:
        hint = difflib.get_close_matches(key, accepted, n=1)
        issues.append(Issue(
            ("source", key),
            f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; accepted keys: {', '.join(accepted)}",
        ))
    return issues


def _transform_issues(index: int, t: TransformSpec) -> tuple[list[Issue], Any]:
    """(problems, the built transformer or None)."""
    cls, issues = _plugin_issues("transformers", t.type, t.options, ("transforms", index), ["type"])
    if cls is None or issues:
        return issues, None
    try:
        return [], make_plugin("transformers", t.type, t.options)
    except ConfigError as exc:
        return [Issue(("transforms", index), str(exc))], None


def _sink_issues(sink: SinkSpec) -> tuple[list[Issue], Any]:
    """(problems, the loader class or None)."""
    cls, issues = _plugin_issues("loaders", sink.type, sink.options, ("sink",), list(SinkSpec.model_fields))
    if cls is None or issues:
        return issues, None
    caps = getattr(cls, "capabilities", None)
    if sink.path is None:
        if caps is not None and caps.extensions:
            return [Issue(("sink", "path"), f"the {sink.type} sink needs path (a file ending in {', '.join(caps.extensions)})")], cls
        return [], cls
    from ags_etl.loaders.storage import is_url

    if is_url(sink.path) and not (caps is not None and caps.object_storage):
        return [Issue(("sink", "path"), (
            f"the {sink.type} sink cannot write to a URL ({sink.path.split('://', 1)[0]}://); object storage takes "
            "geoparquet and geojson sinks only; write to a local path, or choose one of those formats"
        ))], cls
    try:
        make_plugin("loaders", sink.type, sink.options, sink.path, overwrite=sink.overwrite)
    except ConfigError as exc:
        return [Issue(("sink",), str(exc))], cls
    return [], cls


def _fit_issues(job: JobSpec, built: list[Any], loader_cls: Any) -> list[Issue]:
    """Can the sink hold what the source and transforms give? (as far as is known offline)"""
    issues = []
    source, sink = job.source, job.sink
    caps = getattr(loader_cls, "capabilities", None)
    required = None if caps is None else caps.required_crs
    reprojects = [(i, t.target_crs) for i, t in enumerate(built) if getattr(t, "target_crs", None) is not None]
    if required is not None and reprojects:
        i, target = reprojects[-1]
        if not target.equals(required, ignore_axis_order=True):
            from ags_etl.crs import describe_crs

            issues.append(Issue(
                ("transforms", i, "to"),
                f"the {sink.type} sink holds {describe_crs(required)} only, but this reproject goes to "
                f"{describe_crs(target)}; reproject to {required.to_string()} (or drop it: the sink "
                "reprojects itself), or choose a sink without a fixed CRS such as geoparquet or shapefile",
            ))
    if job.sync is not None:
        issues += _sync_issues(job, loader_cls)
    if source.multi_layer and sink.path is not None and LAYER_PLACEHOLDER not in sink.path:
        what = "item" if source.item is not None else "layers"
        issues.append(Issue(
            ("sink", "path"),
            f"the source may give several layers ({what}), which would all be written to {sink.path!r}; "
            f"put {LAYER_PLACEHOLDER} in the path, e.g. {_with_placeholder(sink.path)!r}",
        ))
    return issues


def _sync_issues(job: JobSpec, loader_cls: Any) -> list[Issue]:
    """A sync job's sink is a single local file (merged by key) or takes part in sync itself
    (``supports_sync``; its own ``sync_issues(options, sync)`` classmethod, when it has one,
    names what else it needs); the cursor field and key are among ``source.fields`` when
    those are listed."""
    from ags_etl.loaders.base import FileLoader

    assert job.sync is not None
    issues = []
    sink = job.sink
    if isinstance(loader_cls, type) and issubclass(loader_cls, FileLoader):
        from ags_etl.loaders.storage import is_url

        if sink.path is not None and (is_url(sink.path) or sink.path.endswith("/") or sink.options.get("partitioned")):
            issues.append(Issue(
                ("sync",),
                "a sync job merges into a single local file; a URL or partitioned dataset sink cannot be merged "
                "into; write a local file, or drop sync",
            ))
    elif not getattr(loader_cls, "supports_sync", False):
        issues.append(Issue(
            ("sync",),
            f"the {sink.type} sink cannot take part in a sync job (it neither merges nor upserts by key); "
            "write a file (GeoParquet, GeoJSON, GeoJSONL, shapefile, KMZ), or drop sync",
        ))
    else:
        own = getattr(loader_cls, "sync_issues", None)
        if callable(own):
            issues += [Issue(loc, message) for loc, message in own(sink.options, job.sync)]
    fields = job.source.fields
    if fields is not None:
        listed = {f.lower() for f in fields}
        for name, value in (("cursor_field", job.sync.cursor_field), ("key", job.sync.key)):
            if value is not None and value.lower() not in listed:
                issues.append(Issue(
                    ("sync", name),
                    f"{value!r} is not in source.fields; add it there (the sync needs its values)",
                ))
    return issues


def check_job(job: JobSpec) -> list[Issue]:
    """Every problem of ``job`` that can be known without a network request.

    Plugin names and options (each plugin's ``Options`` model, then its constructor, which
    parses CRSs and reads clip masks); a file sink without ``path``; a multi-layer source whose
    sink path has no ``{layer}``; a sink with a fixed CRS (GeoJSON, KMZ: EPSG:4326) after a
    reproject to another CRS. Locations are relative to the job.
    """
    issues = _source_issues(job.source)
    built = []
    for i, t in enumerate(job.transforms):
        found, transformer = _transform_issues(i, t)
        issues += found
        built.append(transformer)
    found, loader_cls = _sink_issues(job.sink)
    issues += found
    if not issues:
        issues += _fit_issues(job, built, loader_cls)
    if job.resume:
        issues += _resume_issues(job)
    if job.executor == "dask":
        from ags_etl.extractors.dask_executor import sink_problem

        problem = sink_problem(job)
        if problem is not None:
            issues.append(Issue(("executor",), problem))
    return issues


def _resume_issues(job: JobSpec) -> list[Issue]:
    """``resume: true`` stages pages beside a local output file of an ArcGIS source."""
    from ags_etl.loaders.storage import is_url

    if job.source.type != "arcgis":
        return [Issue(("resume",), f"resume works with arcgis sources only, not {job.source.type}; drop resume")]
    if job.sink.path is None or is_url(job.sink.path):
        return [Issue(("resume",), (
            f"resume keeps completed pages beside a local output file, and sink path {job.sink.path!r} is not one; "
            "write to a local path or drop resume"
        ))]
    return []


def validate_job_data(data: Any) -> tuple[JobSpec | None, list[Issue]]:
    """A JobSpec from ``data`` and its problems (locations relative to the job).

    When the job as a whole does not validate, its source, each transform and its sink are
    still checked one by one, so that every problem is reported at once.
    """
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as exc:
        issues = issues_from_error(exc, data, model=JobSpec)
    else:
        return job, check_job(job)
    if not isinstance(data, Mapping):
        return None, issues
    bad = {i.loc[:2] if i.loc[:1] == ("transforms",) else i.loc[:1] for i in issues}
    part = data.get("source")
    if ("source",) not in bad and isinstance(part, Mapping):
        issues += _source_issues(SourceSpec.model_validate(part))
    elif isinstance(part, Mapping) and part.get("type", "arcgis") == "arcgis":
        extra = {k: v for k, v in part.items() if k not in SourceSpec.model_fields}
        issues += _source_issues(SourceSpec.model_construct(**extra))
    transforms = data.get("transforms")
    if ("transforms",) not in bad and isinstance(transforms, list):
        for i, t in enumerate(transforms):
            if ("transforms", i) not in bad and isinstance(t, Mapping):
                issues += _transform_issues(i, TransformSpec.model_validate(t))[0]
    part = data.get("sink")
    if ("sink",) not in bad and isinstance(part, Mapping):
        issues += _sink_issues(SinkSpec.model_validate(part))[0]
    return None, issues


def _with_placeholder(path: str) -> str:
    p = Path(path)
    suffix = "".join(p.suffixes)
    return str(p.parent / f"{LAYER_PLACEHOLDER}{suffix}")


def check_pipeline(spec: PipelineSpec) -> list[Issue]:
    """Every problem of ``spec`` knowable offline: duplicate job names, then :func:`check_job` of
    each job (locations start with ``("jobs", index)``)."""
    issues = duplicate_names([job.name for job in spec.jobs])
    for i, job in enumerate(spec.jobs):
        issues += [Issue(("jobs", i, *issue.loc), issue.message) for issue in check_job(job)]
    return issues


def duplicate_names(names: Sequence[object]) -> list[Issue]:
    """A problem for each job whose name an earlier job already has (locations ``("jobs", i, "name")``)."""
    issues: list[Issue] = []
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in first:
            issues.append(Issue(("jobs", i, "name"), f"job name {name!r} is also used by job #{first[name] + 1}; give each job its own name"))
        else:
            first[name] = i
    return issues
