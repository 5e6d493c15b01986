"""Pipeline files: YAML → interpolated, merged, validated :class:`~ags_etl.spec.PipelineSpec`.

:func:`load_pipeline` reads a file; :func:`parse_pipeline` takes the same data from Python.
Both do, in order and without any network request:

1. ``${VAR}`` and ``${VAR:-default}`` in string values are filled from the environment
   (``$${`` is a literal ``${``); every missing variable is reported;
2. ``defaults`` is merged into every job (mappings merge key by key, the job's value wins;
   ``auth``, lists and scalars are replaced whole);
3. the pydantic models check keys and types, then :func:`ags_etl.spec.check_pipeline` checks
   plugin names and options, duplicate job names and sinks that cannot hold their source.

All problems of a file are raised together as one :class:`~ags_etl.errors.PipelineFileError`,
one line each: ``FILE:LINE: job 'NAME': key.path: what is wrong and what is accepted``. Lines
come from YAML's node tree (``yaml.compose``). A secret — any value under ``auth``, and the
value of any variable used under ``auth`` — is never echoed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ags_etl.errors import PipelineFileError
from ags_etl.spec import Issue, Loc, PipelineSpec, dotted, duplicate_names, issues_from_error, validate_job_data

__all__ = ["PipelineFileError", "interpolate", "load_pipeline", "parse_pipeline"]

#: ``$${`` (escape), ``${NAME}`` or ``${NAME:-default}``; anything else after ``${`` is an error.
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")

#: Secrets shorter than this are not searched for in messages (they would garble every word);
#: no message echoes a value under ``auth`` in the first place.
_MASK_MIN = 4

#: The keys ``defaults`` may set: every job key but ``name``.
_DEFAULT_KEYS = ("source", "transforms", "sink", "sync")

#: Top-level keys that are also job keys (where page tasks run): copied into jobs without them.
_CLUSTER_KEYS = ("executor", "scheduler", "max_requests_per_host")


@dataclass
class _Interpolation:
    """What interpolation found: problems by location, and the strings that are secrets."""

    problems: list[Issue] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)


def _fill(text: str, loc: Loc, env: Mapping[str, str], found: _Interpolation) -> str:
    in_auth = "auth" in loc
    missing: list[str] = []

    def one(match: re.Match[str]) -> str:
        whole, name, default = match.group(0), match.group(1), match.group(2)
        if whole == "$${":
            return "${"
        if name is None:
            found.problems.append(Issue(loc, "'${' starts no variable; write ${NAME} or ${NAME:-default}, or $${ for a literal '${'"))
            return whole
        value = env.get(name)
        if value is None:
            value = default
        if value is None:
            missing.append(name)
            return ""
        if in_auth:
            found.secrets.add(env.get(name, value))
        return value

    out = _VAR.sub(one, text)
    if missing:
        names = ", ".join(missing)
        plural = len(missing) > 1
        found.problems.append(Issue(
            loc,
            f"environment variable{'s' if plural else ''} {names} not set; set {'them' if plural else 'it'} "
            f"or give a default as in ${{{missing[0]}:-default}}",
        ))
    if in_auth:
        found.secrets.add(out)
    return out


def interpolate(data: Any, env: Mapping[str, str], loc: Loc = (), found: _Interpolation | None = None) -> tuple[Any, _Interpolation]:
    """A copy of ``data`` with variables filled in every string value (keys are left alone)."""
    found = found if found is not None else _Interpolation()
    if isinstance(data, str):
        return _fill(data, loc, env, found), found
    if isinstance(data, dict):
        return {k: interpolate(v, env, (*loc, k), found)[0] for k, v in data.items()}, found
    if isinstance(data, list):
        return [interpolate(v, env, (*loc, i), found)[0] for i, v in enumerate(data)], found
    return data, found


def _merge(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge per key (``auth`` is replaced whole)."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = v if k == "auth" or k not in base else _merge(base[k], v)
        return out
    return over


def _node_line(root: yaml.Node | None, loc: Loc) -> tuple[int | None, int]:
    """(1-based line of the deepest node of ``loc`` found in the YAML tree, how many parts matched).

    A mapping key's line is that of the key itself.
    """
    if root is None:
        return None, 0
    node, line, depth = root, root.start_mark.line + 1, 0
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    nxt, line = value_node, key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node, depth = nxt, depth + 1
    return line, depth


def _child(root: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value_node
    return None


class _Renderer:
    """Issues → text lines naming the file, line, job and key path, with secrets masked."""

    def __init__(self, source: str, data: Any, root: yaml.Node | None, secrets: set[str]) -> None:
        self.source = source
        self.data = data
        self.root = root
        self.defaults_node = _child(root, "defaults")
        self.secrets = sorted((s for s in secrets if len(s) >= _MASK_MIN), key=len, reverse=True)

    def job_name(self, index: int) -> str:
        jobs = self.data.get("jobs") if isinstance(self.data, dict) else None
        if isinstance(jobs, list) and 0 <= index < len(jobs) and isinstance(jobs[index], dict):
            name = jobs[index].get("name")
            if isinstance(name, str) and name:
                same = sum(isinstance(j, dict) and j.get("name") == name for j in jobs)
                return f"job {name!r}" + (f" (#{index + 1})" if same > 1 else "")
        return f"job #{index + 1}"

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def line(self, issue: Issue) -> str:
        loc = issue.loc
        where = ""
        if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
            inner = loc[2:]
            line, depth = _node_line(self.root, loc)
            in_job = depth - 2
            d_line, d_depth = _node_line(self.defaults_node, inner)
            if inner and self.defaults_node is not None and d_depth > max(in_job, 0):
                # The value came from defaults: one line for every job that got it.
                line, where = d_line, f"defaults: {dotted(inner)}: "
            else:
                where = f"{self.job_name(loc[1])}: " + (f"{dotted(inner)}: " if inner else "")
        else:
            line, _ = _node_line(self.root, loc)
            where = f"{dotted(loc)}: " if loc else ""
        at = f"{self.source}:{line}" if line is not None else self.source
        return self.mask(f"{at}: {where}{issue.message}")


def _structure(data: Any) -> list[Issue]:
    """Problems with the top level that the merge step must know about first."""
    if not isinstance(data, dict):
        return [Issue((), f"the file holds {type(data).__name__ if data is not None else 'nothing'}, not a mapping; "
                          "start it with 'version: 1' and 'jobs:'")]
    issues: list[Issue] = []
    defaults = data.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, dict):
            issues.append(Issue(("defaults",), f"defaults must be a mapping with some of: {', '.join(_DEFAULT_KEYS)}"))
        else:
            for key in defaults:
                if key not in _DEFAULT_KEYS:
                    issues.append(Issue(("defaults", key), f"unknown key {key!r}; defaults may set: {', '.join(_DEFAULT_KEYS)}"))
    return issues


def _validate(data: Any, source: str, root: yaml.Node | None, env: Mapping[str, str]) -> PipelineSpec:
    """Interpolate, merge defaults, validate; raise PipelineFileError with every problem."""
    filled, found = interpolate(data, env)
    structure = _structure(filled)
    problems: list[Issue] = list(found.problems) + structure
    render = _Renderer(source, filled, root, found.secrets)
    if not structure:
        defaults = filled.get("defaults") or {}
        merged = dict(filled)
        if defaults and isinstance(filled.get("jobs"), list):
            merged["jobs"] = [_merge(defaults, j) if isinstance(j, dict) else j for j in filled["jobs"]]
        cluster = {k: filled[k] for k in _CLUSTER_KEYS if k in filled}  # top level: every job's unless it sets its own
        if cluster and isinstance(merged.get("jobs"), list):
            merged["jobs"] = [{**cluster, **j} if isinstance(j, dict) else j for j in merged["jobs"]]
        later = _check(merged)
        if not problems and not later:
            return PipelineSpec.model_validate(merged)
        # A value left empty by a missing variable is reported once, as that variable.
        problems += [i for i in later if not any(_below(i.loc, p.loc) for p in found.problems)]
    lines = sorted({render.line(p) for p in problems}, key=_line_number)
    raise PipelineFileError(source, lines)


def _check(merged: dict[str, Any]) -> list[Issue]:
    """Every problem of the merged pipeline: top-level keys, then each job on its own."""
    issues: list[Issue] = []
    try:
        PipelineSpec.model_validate(merged)
    except ValidationError as exc:
        issues += [i for i in issues_from_error(exc, merged, model=PipelineSpec) if not _in_a_job(i.loc)]
    jobs = merged.get("jobs")
    if isinstance(jobs, list):
        for index, job in enumerate(jobs):
            issues += [Issue(("jobs", index, *i.loc), i.message) for i in validate_job_data(job)[1]]
        issues += duplicate_names([j.get("name") if isinstance(j, dict) else None for j in jobs])
    return issues


def _in_a_job(loc: Loc) -> bool:
    return len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int)


def _below(loc: Loc, top: Loc) -> bool:
    """True when ``loc`` is ``top`` or inside it; a ``defaults`` location covers every job's copy."""
    if loc[: len(top)] == top:
        return True
    return bool(top) and top[0] == "defaults" and len(loc) >= 2 and loc[0] == "jobs" and loc[2 : 2 + len(top) - 1] == top[1:]


def _line_number(text: str) -> tuple[int, str]:
    m = re.match(r"[^:]*:(\d+):", text)
    return (int(m.group(1)) if m else 0, text)


def load_pipeline(path: str | Path, env: Mapping[str, str] | None = None) -> PipelineSpec:
    """The validated pipeline in the YAML file ``path``; ``env`` defaults to ``os.environ``.

    Raises PipelineFileError (a ConfigError) for an unreadable file, a YAML syntax error (with
    its line) and every problem of the pipeline itself, all together.
    """
    p = Path(path)
    source = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PipelineFileError(source, [f"{source}: no such file; check the path"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PipelineFileError(source, [f"{source}: cannot be read ({reason}); give a readable UTF-8 YAML file"]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PipelineFileError(source, [f"{source}{line}: YAML syntax error: {problem}; fix the file's indentation or quoting there"]) from exc
    problems = _duplicate_keys(root, source)
    if problems:
        raise PipelineFileError(source, problems)
    spec = _validate(data, source, root, os.environ if env is None else env)
    spec.path = p
    return spec


def _duplicate_keys(node: yaml.Node | None, source: str) -> list[str]:
    """YAML keeps the last of two equal keys silently; we refuse them."""
    out: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    out.append(f"{source}:{key_node.start_mark.line + 1}: key {key_node.value!r} appears twice in the same mapping; keep one")
                seen.add(key_node.value)
            out += _duplicate_keys(value_node, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            out += _duplicate_keys(item, source)
    return out


def parse_pipeline(data: dict[str, Any], *, source_name: str = "<dict>", env: Mapping[str, str] | None = None) -> PipelineSpec:
    """The validated pipeline in ``data`` (as a YAML file would hold it), for the Python API.

    Same steps and errors as :func:`load_pipeline`, without line numbers.
    """
    return _validate(data, source_name, None, os.environ if env is None else env)
