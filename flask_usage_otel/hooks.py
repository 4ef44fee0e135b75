"""The Flask hooks that annotate a tracked request, made per tracker as plain functions.

The first ``before_request`` hook admits the request; the last ``after_request`` hook copies
``g.track_var`` and the user while the request context still exists (``lifecycle.py`` says where
each runs). Each guards its whole body: a bug in the tracking costs the request its record,
never its response.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import g, request

if TYPE_CHECKING:
    from flask import Request, Response


def first_before_request(
    key: str,
    admit: Callable[[Any, Request], None],
    unwrapped: Callable[[], None],
    failed: Callable[[str], None],
) -> Callable[[], None]:
    """The first ``before_request`` hook: sets ``g.track_var`` and admits the request.

    :param key: the environ key of the request's exchange.
    :param admit: decides whether the exchange's request is tracked, and starts it.
    :param unwrapped: called when the request did not come through the wrapper (it was removed).
    :param failed: counts and logs a failure of the hook.
    """
    current_request = request._get_current_object  # type: ignore[attr-defined]
    current_g = g._get_current_object  # type: ignore[attr-defined]

    def before_request() -> None:
        try:
            ctx_g = current_g()
            # Flask-Track-Usage's views write g.track_var["key"] = value without creating it.
            if "track_var" not in ctx_g.__dict__:
                ctx_g.track_var = {}
            req = current_request()
            exchange = req.environ.get(key)
            if exchange is None:
                unwrapped()
            elif not exchange.decided:
                exchange.g = ctx_g
                admit(exchange, req)
        except Exception:
            failed("before_request")

    return before_request


def last_after_request(
    key: str,
    only_established_user: bool,
    admit: Callable[[Any, Request], None],
    capture_details: Callable[..., None],
    failed: Callable[[str], None],
) -> Callable[[Response], Response]:
    """The last ``after_request`` hook: the response is made and the request context still exists.

    ``g.track_var`` is copied here, while a value bound to the request context (the session,
    any ``LocalProxy``) can still be read: the request finishes after Flask has popped the
    context. The app's own user callable runs here too, after every other ``after_request``.
    A request that ended before the first ``before_request`` hook (in one of the app's URL value
    preprocessors, or a ``before_request`` hook put ahead of ours) is admitted here, with its g.

    :param only_established_user: the user is Flask-Login's, when loaded: then nothing needs
        copying unless g holds a track_var or a logged-in user (the state's defaults stand).
    :param admit: decides whether the exchange's request is tracked, and starts it.
    :param capture_details: copies ``g.track_var`` and the user into the state.
    """
    current_request = request._get_current_object  # type: ignore[attr-defined]
    current_g = g._get_current_object  # type: ignore[attr-defined]

    def after_request(response: Response) -> Response:
        try:
            req = current_request()
            exchange = req.environ.get(key)
            if exchange is not None:
                state = exchange.state
                if state is None and not exchange.decided:  # rare: our before_request never ran
                    exchange.g = current_g()
                    admit(exchange, req)
                    state = exchange.state
                ctx_g = exchange.g
                if state is not None and ctx_g is not None:
                    found = ctx_g.__dict__
                    if not only_established_user or found.get("track_var") or "_login_user" in found:
                        capture_details(state, ctx_g, resolve=True)
                    exchange.g = None  # captured: finish has nothing left to read from g
        except Exception:
            failed("after_request")
        return response

    return after_request
