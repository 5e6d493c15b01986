"""Request parameters and response bodies of the local FeatureServer (no I/O).

ArcGIS REST reads the same parameters from a GET query string and from a POST
``application/x-www-form-urlencoded`` body; names are matched case-insensitively
(ArcGIS Server 10.x accepts ``outfields`` as well as ``outFields``). Errors are
sent, as ArcGIS does, with HTTP 200 and a body ``{"error": {"code", "message",
"details"}}``: :class:`RestError` carries one to the HTTP layer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson

#: ArcGIS's answer to an invalid query (bad where clause, unknown field …), 10.x–11.x.
QUERY_FAILED = "Unable to complete operation."


class RestError(Exception):
    """An error the server answers with ``{"error": {...}}``.

    ``http_status`` is the HTTP status line to send: 200 for the usual ArcGIS
    error bodies, 5xx only for injected faults.
    """

    def __init__(self, code: int, message: str, details: list[str] | None = None, *, http_status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details or [])
        self.http_status = http_status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def invalid_url() -> RestError:
    """ArcGIS's answer to a path it does not know (HTTP 200, code 400)."""
    return RestError(400, "Invalid URL", [])


def invalid_parameter(name: str, reason: str) -> RestError:
    """A query parameter that cannot be used: ArcGIS's 400 "Unable to complete operation."."""
    return RestError(400, QUERY_FAILED, [f"'{name}' parameter is invalid: {reason}"])


class Params:
    """Request parameters, looked up case-insensitively; the last value of a repeated name wins.

    Values from a POST body override those of the query string.
    """

    def __init__(self, query: str = "", body: str = "") -> None:
        self._values: dict[str, str] = {}
        for source in (query, body):
            for key, value in parse_qsl(source, keep_blank_values=True):
                self._values[key.lower()] = value

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._values

    def get(self, name: str, default: str | None = None) -> str | None:
        """The raw value, or ``default`` when absent. Blank values count as absent."""
        value = self._values.get(name.lower())
        if value is None or value.strip() == "":
            return default
        return value

    def text(self, name: str, default: str) -> str:
        value = self.get(name)
        return default if value is None else value

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean parameter: ``true``/``false`` in any case (ArcGIS also takes 1/0)."""
        value = self.get(name)
        if value is None:
            return default
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise invalid_parameter(name, f"expected true or false, got {value!r}")

    def integer(self, name: str, *, minimum: int = 0) -> int | None:
        """A whole-number parameter (None when absent); ``minimum`` is enforced."""
        value = self.get(name)
        if value is None:
            return None
        try:
            number = int(value.strip())
        except ValueError:
            try:
                as_float = float(value.strip())
            except ValueError:
                raise invalid_parameter(name, f"expected an integer, got {value!r}") from None
            if not as_float.is_integer():
                raise invalid_parameter(name, f"expected an integer, got {value!r}") from None
            number = int(as_float)
        if number < minimum:
            raise invalid_parameter(name, f"must be at least {minimum}, got {number}")
        return number

    def json(self, name: str) -> Any:
        """A parameter holding JSON (None when absent)."""
        value = self.get(name)
        if value is None:
            return None
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise invalid_parameter(name, f"not valid JSON ({exc})") from exc


def json_bytes(obj: Any, *, pretty: bool = False) -> bytes:
    """Serialise a response body with orjson (``pretty`` for ``f=pjson``)."""
    option = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    if pretty:
        option |= orjson.OPT_INDENT_2
    return orjson.dumps(obj, option=option)
