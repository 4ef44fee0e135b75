"""The requests both Flask-Track-Usage 2.0 and flask-usage-otel serve in the comparison tests.

Imported by the tests and by ``ftu_runner.py`` under the reference interpreter (Flask 2.2),
so it uses only what both Flask versions have. The views are the ones a Flask-Track-Usage
user has: ``g.track_var`` filled as its README shows, a blueprint, view arguments,
basic auth, a 404 and a 405.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, g

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
HEADERS = {"User-Agent": USER_AGENT, "Accept-Language": "fr-CH, fr;q=0.9"}
LONG = "x" * 300
IPV6_CHAIN = "2001:db8:85a3::8a2e:370:7334, 2001:db8:ffff:ffff:ffff:ffff:ffff:ffff, 203.0.113.77"


def build_app(name: str = "ftu_compare") -> Flask:
    """The app under test; the caller adds the tracking extension."""
    app = Flask(name)

    @app.route("/")
    def index() -> str:
        return "home"

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> str:
        g.track_var["optional"] = "something"  # Flask-Track-Usage's README
        g.track_var["item"] = item_id
        return f"item {item_id}"

    @app.route("/café/<name>")
    def cafe(name: str) -> str:
        return name

    @app.route("/secret")
    def secret() -> str:
        return "secret"

    @app.route("/long/<path:rest>")
    def long(rest: str) -> str:
        g.track_var["note"] = "n" * 200
        return "long"

    api = Blueprint("api", __name__)

    @api.route("/ping")
    def ping() -> str:
        return "pong"

    app.register_blueprint(api, url_prefix="/api")
    return app


def _basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()


REQUESTS: list[dict[str, Any]] = [
    {"path": "/"},
    {"path": "/items/7", "query": "ref=mail&x=1", "headers": {"X-Forwarded-For": "203.0.113.9"}},
    {"path": "/café/naïve", "query": "q=é"},
    {"path": "/api/ping"},
    {"path": "/missing"},
    {"path": "/secret", "headers": {"Authorization": _basic("alice")}},
    {"path": "/items/8", "method": "POST"},
    {"path": "/", "headers": {"Host": "example.com:80"}},
]
"""Short values: they fit Flask-Track-Usage's narrow columns on every database."""

LONG_REQUESTS: list[dict[str, Any]] = [
    {"path": f"/long/{LONG}", "query": "q=" + "y" * 200, "headers": {"X-Forwarded-For": IPV6_CHAIN}},
    {"path": "/items/9", "headers": {"X-Forwarded-For": IPV6_CHAIN, "User-Agent": "U" * 300}},
]
"""Values longer than Flask-Track-Usage 2.0's columns (url 128, path 32, xforwardedfor 24, track_var 128)."""


def run(app: Flask, requests: list[dict[str, Any]]) -> None:
    """Send each request through the app's test client, in order, and check none failed."""
    client = app.test_client()
    for spec in requests:
        headers = {**HEADERS, **spec.get("headers", {})}
        response = client.open(
            spec["path"],
            method=spec.get("method", "GET"),
            query_string=spec.get("query", ""),
            headers=headers,
        )
        assert response.status_code < 500, (spec, response.status_code, response.get_data(as_text=True))


def encode(value: Any) -> Any:
    """A value as JSON that keeps its Python type, so two interpreters' results compare exactly."""
    if value is None:
        return None
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, str):
        return {"str": value}
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dict):
        return {"dict": {str(k): encode(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"list": [encode(v) for v in value]}
    return {type(value).__name__: str(value)}


def decode(value: Any) -> Any:
    """``encode``'s inverse (datetimes come back as ISO text)."""
    if value is None:
        return None
    [(kind, inner)] = value.items()
    if kind == "float":
        return float(inner)
    if kind == "dict":
        return {k: decode(v) for k, v in inner.items()}
    if kind == "list":
        return [decode(v) for v in inner]
    return inner


def dumps(rows: list[dict[str, Any]]) -> str:
    return json.dumps([encode(row) for row in rows], ensure_ascii=False)
