"""Text as the usage table stores it: cleaned and cut to a column's width, JSON, the full URL.

Shared by the row builder (every written row) and the readers and erasure (filter values).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..internals import compact_json
from ..request_text import first_language, full_url

if TYPE_CHECKING:
    from ..record import UsageRecord

EPOCH = datetime(1970, 1, 1)

TRUNCATED_JSON_KEY = "_truncated"

_encode_json = compact_json  # the C encoder called straight when it passed its check (see internals)
cached_language = lru_cache(maxsize=1024)(first_language)
"""``first_language`` of an ``Accept-Language`` of at most ``MAX_CACHED_LANGUAGE`` characters."""
MAX_CACHED_LANGUAGE = 256  # longer headers are parsed each time rather than kept in the cache


def language(accept_language: str | None) -> str | None:
    if accept_language is not None and len(accept_language) > MAX_CACHED_LANGUAGE:
        return first_language(accept_language)
    return cached_language(accept_language)


def clean_text(value: Any, width: int | None) -> str | None:
    """Text the database accepts: no NUL (PostgreSQL refuses it), no lone surrogates, at most ``width`` characters."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    if width is not None and len(text) > width:
        text = text[:width]
    return text


def json_text(value: Any, width: int) -> str | None:
    """``value`` as compact JSON of at most ``width`` characters (None stays NULL)."""
    if not value:
        if value is None:
            return None
        if type(value) is dict or isinstance(value, Mapping):
            return "{}"  # most requests: no view arguments, no track_var
    text = _encode_json(value)
    if not (text.isascii() and "\x00" not in text):
        text = clean_text(text, None) or ""
    if len(text) > width:
        # Cut JSON is no longer JSON: keep a valid object that says so.
        text = json.dumps({TRUNCATED_JSON_KEY: text[: width - 40]}, ensure_ascii=False)
        text = text if len(text) <= width else json.dumps({TRUNCATED_JSON_KEY: True})
    return text


def record_url(record: UsageRecord) -> str:
    """``record.url`` (``request.url``), or the nearest URL that can be stored when it has a lone surrogate."""
    return values_url(record.scheme, record.host, record.script_root, record.path, record.query_string)


def values_url(scheme: str, host: str, script_root: str, path: str, query_string: str) -> str:
    """``request.url`` of these parts (``UsageRecord.url``), which takes a fast path for plain ASCII URLs itself."""
    try:
        return full_url(scheme, host, script_root, path, query_string)
    except UnicodeEncodeError:  # a lone surrogate: quote() refuses it, so the row would be lost
        return full_url(scheme, host, clean_text(script_root, None) or "", clean_text(path, None) or "", query_string)
