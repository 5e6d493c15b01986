"""Where clauses: ArcGIS SQL rewritten for SQLite, and guarded.

A where clause is pasted into ``SELECT … FROM features WHERE (<clause>)``, so it
is checked twice:

1. here, token by token (string literals are skipped): no ``;``, no bind
   parameters (``? : @ $``), no comments, no unbalanced parentheses (the clause
   must not close the surrounding ``(…)``), no ``SELECT`` (ArcGIS standardized queries allow no
   subqueries, 10.3+ and always on in Online), no reference to the store's own
   ``__ags*`` columns, and double-quoted names must be fields — SQLite would
   otherwise read an unknown ``"NAME"`` as the string 'NAME' and match nothing;
2. by the SQLite authorizer of every read connection (see storage.py): only
   reads of the layer table and a short list of functions are allowed, so even a
   clause that slipped through cannot read ``sqlite_master``, call
   ``load_extension`` or write anything (the connections are read-only too).

Size: a clause is at most :data:`MAX_LENGTH` characters and nests parentheses
(function calls included) at most :data:`MAX_DEPTH` deep; the time a clause
that passes may take is bounded by the server's per-query deadline (storage.py).

Rewrites: ``date 'yyyy-mm-dd[ hh:mm:ss]'`` and ``timestamp 'yyyy-mm-dd hh:mm:ss'``
become epoch milliseconds (how date fields are stored); ``CURRENT_DATE`` and
``CURRENT_TIMESTAMP`` become the current UTC day / instant in epoch ms.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection

from ags_etl.server.protocol import QUERY_FAILED, RestError
from ags_etl.server.sources import INTERNAL_PREFIX

_TOKENS = re.compile(
    r"""
    (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")*")
  | (?P<word>[^\W\d]\w*)
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ws>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

#: Longest where clause accepted (an IN list of a few thousand ids fits).
MAX_LENGTH = 65_536
#: Deepest parenthesis nesting accepted (real clauses stay under 10).
MAX_DEPTH = 32
_FORBIDDEN_CHARS = frozenset(";?:@$")
_FORBIDDEN_WORDS = frozenset({"select", "pragma", "attach", "detach", "vacuum", "with"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


def _reject(reason: str) -> RestError:
    return RestError(400, QUERY_FAILED, [f"'where' parameter is invalid: {reason}"])


def _literal_ms(keyword: str, literal: str) -> int:
    text = literal[1:-1].replace("''", "'").strip().replace("T", " ")
    for fmt in _DATE_FORMATS:
        try:
            moment = dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        return (moment - _EPOCH) // dt.timedelta(milliseconds=1)
    raise _reject(f"{keyword.upper()} {literal} is not a date; use {keyword.upper()} 'yyyy-mm-dd hh:mm:ss'")


def _now_ms(date_only: bool) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    if date_only:
        now = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return (now - _EPOCH) // dt.timedelta(milliseconds=1)


def rewrite(where: str, field_names: Collection[str]) -> str:
    """Check an ArcGIS where clause and return the SQLite expression to use.

    ``field_names`` are the layer's fields (matched case-insensitively). Raises
    RestError (HTTP 200, code 400 "Unable to complete operation.") when refused,
    and no other exception for any string.
    Syntax and unknown bare names are left for SQLite to report.
    """
    if len(where) > MAX_LENGTH:
        raise _reject(f"it is {len(where)} characters long; at most {MAX_LENGTH} are accepted, shorten it")
    known = {n.lower() for n in field_names}
    out: list[str] = []
    tokens = [(m.lastgroup, m.group()) for m in _TOKENS.finditer(where)]
    depth = 0
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "other" and text == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise _reject(f"parentheses nest more than {MAX_DEPTH} deep; simplify the expression")
        elif kind == "other" and text == ")":
            depth -= 1
            if depth < 0:
                # The clause sits inside "WHERE (…)": a stray ")" would close it early.
                raise _reject("a ')' has no matching '('")
        if kind == "other" and text in "-/" and i + 1 < len(tokens) and tokens[i + 1][1] == ("-" if text == "-" else "*"):
            # A comment would hide the rest of the statement (the server's own conditions).
            raise _reject("comments ('--', '/*') are not allowed outside a quoted string")
        if kind == "other" and text in ("'", '"'):
            raise _reject(f"a {text} opens a quoted string that is never closed")
        if kind == "other" and text in _FORBIDDEN_CHARS:
            raise _reject(f"the character {text!r} is not allowed outside a quoted string")
        if kind == "word":
            low = text.lower()
            if low in _FORBIDDEN_WORDS:
                raise _reject(f"{text.upper()} is not allowed (no subqueries or statements)")
            if low.startswith(INTERNAL_PREFIX):
                raise _reject(f"invalid field name {text!r}")
            if low in ("date", "timestamp"):
                j = i + 1
                while j < len(tokens) and tokens[j][0] == "ws":
                    j += 1
                if j < len(tokens) and tokens[j][0] == "str":
                    out.append(str(_literal_ms(low, tokens[j][1])))
                    i = j + 1
                    continue
            if low in ("current_date", "current_timestamp"):
                out.append(str(_now_ms(low == "current_date")))
                i += 1
                continue
        if kind == "qid":
            name = text[1:-1].replace('""', '"')
            if name.lower() not in known:
                raise _reject(f"invalid field name {name!r}")
        out.append(text)
        i += 1
    if depth != 0:
        raise _reject(f"{depth} '(' without a matching ')'")
    return "".join(out)


def is_everything(where: str) -> bool:
    """True for the where clauses that select every row (``1=1`` and blanks)."""
    return re.fullmatch(r"\s*(?:1\s*=\s*1)?\s*", where) is not None
