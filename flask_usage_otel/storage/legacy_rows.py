"""Rows read back exactly as Flask-Track-Usage 2.0's ``SQLStorage.get_usage`` returned them.

Flask-Track-Usage gave back the JSON text it had stored (``json.dumps`` with its default
separators), None for an empty object, and the database's naive datetime. Rows written
by this package hold compact JSON; they are re-encoded here so that both kinds of row
read alike, and code that does ``json.loads(row["track_var"])`` keeps working.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timezone
from typing import Any

from ..columns import COLUMNS, USER_AGENT_COLUMNS, Kind
from ..record import UNMATCHED_ROUTE


def legacy_usage_dict(row: Mapping[str, Any], dialect: str = "sqlite") -> dict[str, Any]:
    """One usage row as Flask-Track-Usage's ``get_usage`` built it (its keys, in its order).

    :param dialect: the database's SQLAlchemy dialect name. On MariaDB/MySQL Flask-Track-Usage
        read ``authorization`` from a reflected ``TINYINT(1)``, so it gave 0 or 1, not a bool.
    """
    get = row.get
    authorization = get("authorization")
    if authorization is not None:
        authorization = int(authorization) if dialect in ("mysql", "mariadb") else bool(authorization)
    status = get("status")
    when = row["datetime"]
    view_args = legacy_json(get("view_args"), ensure_ascii=False)
    if view_args is None and get("route") == UNMATCHED_ROUTE and get("view_args") == "{}":
        # Flask-Track-Usage stored request.view_args, which is None when no URL rule matched.
        view_args = "null"
    decoded = {
        "view_args": view_args,
        "status": None if status is None else int(status),
        "authorization": authorization,
        # Flask-Track-Usage wrote ip_info with json.dumps' defaults (ASCII only) and no "{}" rule.
        "ip_info": legacy_json(get("ip_info"), ensure_ascii=True, empty_is_none=False),
        "datetime": when.astimezone(timezone.utc).replace(tzinfo=None) if when is not None and when.tzinfo else when,
        "track_var": legacy_json(get("track_var"), ensure_ascii=False),
    }
    result: dict[str, Any] = {}
    for name, key, nested in _LEGACY_PLAN:
        value = decoded[name] if name in decoded else get(name)
        if nested:
            result.setdefault("user_agent", {})[key] = value
        else:
            result[key] = value
    return result


# (column, key, nested under "user_agent") for Flask-Track-Usage's columns but its id, which it did not return.
_LEGACY_PLAN = tuple(
    (c.name, c.key, c.name in USER_AGENT_COLUMNS) for c in COLUMNS if c.is_legacy and c.kind is not Kind.ID
)


def legacy_json(text: str | None, *, ensure_ascii: bool, empty_is_none: bool = True) -> str | None:
    """Stored JSON text in Flask-Track-Usage's spelling (``{"a": 1}``); None for NULL and, as it did, ``{}``.

    Text that is not JSON (a value an older table cut to its width) is returned as stored.
    """
    if text is None:
        return None
    if empty_is_none and text == "{}":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    encoded = json.dumps(value, ensure_ascii=ensure_ascii)
    return None if empty_is_none and encoded == "{}" else encoded
