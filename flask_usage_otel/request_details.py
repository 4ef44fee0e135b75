"""What the record takes from Flask's ``g`` and the request headers: the user and ``g.track_var``.

Read on the request's thread; only values already there are read, nothing is loaded.
"""

from __future__ import annotations

import logging
from typing import Any

from werkzeug.local import LocalProxy

logger = logging.getLogger("flask_usage_otel")


def established_user(ctx_g: Any) -> str | None:
    """The id of the user Flask-Login has already loaded for this request, else None.

    Reads ``g._login_user`` only: asking ``current_user`` would run the app's user or
    request loader (often a database query) on views that never needed the user.
    """
    if ctx_g is None:
        return None
    user = ctx_g.__dict__.get("_login_user")
    if user is None:
        return None
    try:
        if not user.is_authenticated:
            return None
        user_id = user.get_id()
    except Exception:  # the app's user model failed: no user, the request is not affected
        logger.debug("could not read the Flask-Login user", exc_info=True)
        return None
    return None if user_id is None else str(user_id)


def basic_auth_user(environ: dict[str, Any]) -> str | None:
    """The user name of a Basic ``Authorization`` header, as sent: nothing verified it."""
    header = environ.get("HTTP_AUTHORIZATION")
    if not header or header[:6].lower() != "basic ":
        return None
    from werkzeug.datastructures import Authorization

    auth = Authorization.from_header(header)
    return auth.username if auth is not None else None


def track_var_of(ctx_g: Any, *, resolve: bool) -> dict[str, Any] | None:
    """A copy of ``g.track_var`` (None when empty); with ``resolve``, context-bound values read now."""
    track_var = ctx_g.__dict__.get("track_var")
    if not track_var:
        return None
    if not isinstance(track_var, dict):
        track_var = {"value": track_var}
    if not resolve:
        return dict(track_var)
    return {key: _resolved(value) for key, value in track_var.items()}


def _resolved(value: Any) -> Any:
    if isinstance(value, LocalProxy):
        try:
            return value._get_current_object()  # type: ignore[attr-defined]
        except Exception:  # nothing behind it: the storage sink drops the row as unserialisable
            return value
    return value
