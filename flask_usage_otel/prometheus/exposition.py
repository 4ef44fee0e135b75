"""The ``/metrics`` view: encoding a registry for a scrape, the scrape's authorisation, and adding the route.

Our request metrics are written by :class:`~.renderer.Renderer` (in multiprocess mode, the directory by
:class:`~.filescrape.DirectoryScrape`), each byte for byte what prometheus_client's encoders write and
each checked once against them; when a check fails, the encoders write the whole scrape.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Response, request
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_exposition

from ..config import MetricsAuth
from ..internals import ScrapeReads, select, single_process_values
from .filescrape import scrape_directory
from .metrics import owned_metrics, route_inventories
from .multiprocess import LockedMultiProcessCollector
from .renderer import ENCODERS, Collectors, Renderer, check_renderer, form_of

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger("flask_usage_otel.prometheus")


def _public_render(registry: Any, form: str, ours: Iterable[Any]) -> bytes:
    return ENCODERS[form](registry)


def select_renderer(reads: type[ScrapeReads] = ScrapeReads) -> Callable[[Any, str, Iterable[Any]], bytes]:
    """Our renderer when its scrape of the check's registry is prometheus_client's; else the encoders."""
    renderer = Renderer(reads)
    if not single_process_values():  # throwaway metrics would land in the files; the directory is scraped instead
        return _public_render
    return select(
        "prometheus_client's registry, children and value cells (read for /metrics)",
        "prometheus-client",
        lambda: check_renderer(Renderer(reads)),
        renderer.render,
        _public_render,
    )


render_registry = select_renderer()


def render(registry: CollectorRegistry, accept: str | None, multiprocess: bool) -> tuple[bytes, str]:
    """Encode ``registry`` for a scrape that sent ``Accept: accept``: (body, content type)."""
    encoder, content_type = text_exposition.choose_encoder(accept or "")
    if multiprocess and content_type.startswith("application/openmetrics-text"):
        # Exemplars do not exist in multiprocess mode; plain text is the honest answer.
        encoder, content_type = text_exposition.generate_latest, text_exposition.CONTENT_TYPE_PLAIN_0_0_4
    form = form_of(encoder, accept)
    if multiprocess:
        inventories = Collectors(list(route_inventories(registry)))  # in no file: every worker reads the same URL map
        files = scrape_directory() if form is not None else None
        if files is None:  # prometheus_client's collector, locked: child_exit may be folding a dead worker's files
            merged = CollectorRegistry()
            LockedMultiProcessCollector(merged)
            merged.register(inventories)  # type: ignore[arg-type]
            return encoder(merged), content_type
        return files + encoder(inventories), content_type
    if form is None:
        return encoder(registry), content_type
    return render_registry(registry, form, owned_metrics(registry)), content_type


@dataclass(frozen=True, slots=True)
class MetricsView:
    """The ``/metrics`` view function, bound to one registry and one auth rule."""

    registry: CollectorRegistry
    auth: MetricsAuth
    multiprocess: bool

    def __call__(self) -> Response:
        if self.auth is not None and not _authorised(self.auth, request):
            return Response(
                "Unauthorized\n",
                status=401,
                mimetype="text/plain",
                headers={"WWW-Authenticate": _challenge(self.auth)},
            )
        body, content_type = render(self.registry, request.headers.get("Accept"), self.multiprocess)
        response = Response(body, content_type=content_type)
        response.headers["Cache-Control"] = "no-store"
        return response


class MetricsMount:
    """Adds the metrics route to an app at its first request, unless the app has a route on that path then.

    A library never takes over a route the app owns, including one the app adds after
    ``init_app``; Flask accepts routes until the app's first request, so the route is added
    at that last moment: this object sits above ``app.wsgi_app`` until then, and takes
    itself out after (it stays as a pass-through only if something wrapped over it meanwhile).
    An app that owns the path keeps it, and a warning says how to serve the metrics elsewhere.
    """

    def __init__(self, app: Flask, path: str, endpoint: str, view: Callable[[], Response]) -> None:
        self.path = path
        self.endpoint = endpoint
        self.view = view
        self.inner: Callable[..., Any] = app.wsgi_app
        self._app_ref = weakref.ref(app)
        self._lock = threading.Lock()
        self._pending = False
        if endpoint in app.view_functions:  # ours, from an earlier set-up of this app: the new view serves it
            app.view_functions[endpoint] = view
        elif not _leave_to_app(app, path, endpoint):
            self._pending = True
            app.wsgi_app = self  # type: ignore[method-assign]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if self._pending:
            self._mount()
        return self.inner(environ, start_response)

    def is_top(self, app: Flask) -> bool:
        """Whether this object is ``app.wsgi_app`` itself (nothing wrapped over it)."""
        return app.__dict__.get("wsgi_app") is self

    def cancel(self, app: Flask) -> None:
        """Add nothing after all (a new set-up of the app replaces this one), and step out when on top."""
        with self._lock:
            self._pending = False
            if self.is_top(app):
                app.wsgi_app = self.inner  # type: ignore[method-assign]

    def _mount(self) -> None:
        with self._lock:
            app = self._app_ref()
            if not self._pending or app is None:
                return
            self._pending = False
            if not _leave_to_app(app, self.path, self.endpoint):
                try:
                    app.add_url_rule(self.path, endpoint=self.endpoint, view_func=self.view, methods=["GET"])
                except AssertionError:  # Flask refuses new routes once the app has served a request
                    logger.warning(
                        "flask-usage-otel cannot add its metrics route %r: the app served requests before "
                        "init_app; call init_app before the app serves any",
                        self.path,
                    )
            if self.is_top(app):
                app.wsgi_app = self.inner  # type: ignore[method-assign]


def _leave_to_app(app: Flask, path: str, endpoint: str) -> bool:
    """Whether the app has its own route on ``path`` (either slash spelling); logs once per set-up if so."""
    bare = path.rstrip("/")
    owned = sorted({r.endpoint for r in app.url_map.iter_rules() if r.rule.rstrip("/") == bare} - {endpoint})
    if owned:
        logger.warning(
            "the app has its own view at %r (endpoint %s): flask-usage-otel leaves it alone and does not "
            "serve its metrics; set TRACK_USAGE_METRICS_PATH to a free path (such as '/usage/metrics') to "
            "serve them there, or to None to silence this",
            path,
            ", ".join(owned),
        )
    return bool(owned)


def _challenge(auth: MetricsAuth) -> str:
    return 'Basic realm="metrics"' if isinstance(auth, tuple) else 'Bearer realm="metrics"'


def _authorised(auth: MetricsAuth, req: Any) -> bool:
    if callable(auth):
        try:
            return bool(auth(req))
        except Exception:
            logger.exception("TRACK_USAGE_METRICS_AUTH callable failed; refusing the scrape")
            return False
    # The WSGI server decoded the header's bytes as latin-1: encoding it back gives exactly
    # the bytes the client sent, which are compared with the token's UTF-8 bytes.
    header = req.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if isinstance(auth, str):
        return scheme.lower() == "bearer" and _equal_bytes(_wire_bytes(credentials.strip()), auth)
    if isinstance(auth, tuple) and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both comparisons always run, so timing does not tell which part was wrong.
        user_ok = _equal(user, auth[0])
        password_ok = _equal(password, auth[1])
        return bool(sep) and user_ok and password_ok
    return False


def _wire_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # not a WSGI string (a test client's own environ): its UTF-8 then
        return text.encode("utf-8", "surrogateescape")


def _equal_bytes(given: bytes, expected: str) -> bool:
    return hmac.compare_digest(given, expected.encode("utf-8"))


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))
