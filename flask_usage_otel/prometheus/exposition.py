"""The ``/metrics`` view: encoding a registry for a scrape, and the scrape's authorisation."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from flask import Response, request
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_exposition

from ..config import MetricsAuth
from .multiprocess import LockedMultiProcessCollector

logger = logging.getLogger("flask_usage_otel.prometheus")


def render(registry: CollectorRegistry, accept: str | None, multiprocess: bool) -> tuple[bytes, str]:
    """Encode ``registry`` for a scrape that sent ``Accept: accept``: (body, content type)."""
    if multiprocess:
        registry = CollectorRegistry()
        # Locked: gunicorn's child_exit may be folding a dead worker's files into the archive.
        LockedMultiProcessCollector(registry)
    encoder, content_type = text_exposition.choose_encoder(accept or "")
    if multiprocess and content_type.startswith("application/openmetrics-text"):
        # Exemplars do not exist in multiprocess mode; plain text is the honest answer.
        # (choose_encoder returns a functools.partial for OpenMetrics, so compare the type, not the function.)
        encoder, content_type = text_exposition.generate_latest, text_exposition.CONTENT_TYPE_PLAIN_0_0_4
    return encoder(registry), content_type


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
