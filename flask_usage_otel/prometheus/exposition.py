"""The ``/metrics`` view: encoding a registry for a scrape, the scrape's authorisation, and adding the route.

Our own request metrics hold a series per (method, route, blueprint, status), each with some 30
samples; prometheus_client's encoders build a ``Sample`` with a labels dict for each and sort and
escape those labels again for every line. :class:`Renderer` writes our families itself: each
series' label text is made once and kept, the ``le`` texts once per histogram, and each line is
written straight from the value cells (read through :class:`~flask_usage_otel.internals.ScrapeReads`).
The other collectors on the registry go through prometheus_client's encoder, in the registry's
order, so the scrape is byte for byte the one ``generate_latest`` writes; :func:`check_renderer`
proves it once at import and the public encoder is used when it fails.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Response, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from ..config import MetricsAuth
from ..internals import ScrapeReads, select, single_process_values
from .filescrape import scrape_directory
from .metrics import owned_metrics, route_inventories
from .multiprocess import LockedMultiProcessCollector
from .textformat import (
    EOF,
    OPENMETRICS,
    TEXT,
    braced,
    exemplar_text,
    go_count,
    go_float,
    header,
    label_pairs,
    le_parts,
    le_split,
    plain_names,
)

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger("flask_usage_otel.prometheus")

_ESCAPINGS = (openmetrics_exposition.UNDERSCORES, openmetrics_exposition.ALLOWUTF8)
"""What the encoders do to names in the legacy character set under these: nothing, as here."""


class _Family:
    """One of our metrics as the renderer writes it: names and headers made once, each series' labels once."""

    def __init__(self, metric: Any, reads: type[ScrapeReads]) -> None:
        described = metric.describe()[0]
        self.name: str = described.name
        self.documentation: str = described.documentation
        self.kind = described.type  # counter, gauge or histogram: what Renderer.render takes as ours
        self.label_names: tuple[str, ...] = reads.labelnames(metric)
        self.plain = not described.unit and plain_names(self.name, (*self.label_names, "le"))
        self.before = le_split(self.label_names)
        self.series: dict[tuple[str, ...], tuple[str, str, str]] = {}
        if self.kind == "histogram":
            bounds = reads.bounds(metric)
            self.le = le_parts(bounds, self.before, len(self.label_names) - self.before)
            self.show_sum = bounds[0] >= 0

    def labels(self, values: tuple[str, ...]) -> tuple[str, str, str]:
        """``{...}`` of a series, and its label text before and after where ``le`` goes."""
        made = self.series.get(values)
        if made is None:
            pairs = label_pairs(sorted(zip(self.label_names, values, strict=True)))
            made = self.series[values] = (braced(pairs), ",".join(pairs[: self.before]), ",".join(pairs[self.before :]))
        return made

    def forget_removed(self, children: int) -> None:
        if len(self.series) > 2 * children + 64:  # series removed from the metric: start the cache again
            self.series.clear()


class Renderer:
    """Writes a registry's scrape: our families itself, the other collectors through prometheus_client."""

    def __init__(self, reads: type[ScrapeReads] = ScrapeReads) -> None:
        self.reads = reads
        self._families: weakref.WeakKeyDictionary[Any, _Family] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def family(self, metric: Any) -> _Family:
        found = self._families.get(metric)
        if found is None:
            with self._lock:
                found = self._families.setdefault(metric, _Family(metric, self.reads))
        return found

    def render(self, registry: Any, form: str, ours: Iterable[Any]) -> bytes:
        """``registry`` in ``form`` (TEXT or OPENMETRICS, legacy-safe escaping), our metrics in ``ours``."""
        encode = _ENCODERS[form]
        # Values in multiprocess files (the store was chosen again after this import) are scraped from the files.
        collectors = self.reads.collectors(registry) if single_process_values() else None
        if collectors is None:
            return encode(registry)
        owned = {id(metric) for metric in ours if isinstance(metric, (Counter, Gauge, Histogram))}
        use_created = bool(self.reads.created())
        out: list[str] = []
        others: list[Any] = []
        for collector in collectors:
            family = self.family(collector) if id(collector) in owned else None
            if family is None or not family.plain:
                others.append(collector)
                continue
            if others:
                out.append(_encoded(encode, others, form))
                others = []
            _WRITERS[family.kind](self.reads, family, collector, form, use_created, out)
        if others:
            out.append(_encoded(encode, others, form))
        if form == OPENMETRICS:
            out.append(EOF)
        return "".join(out).encode("utf-8")


def _encoded(encode: Callable[[Any], bytes], collectors: list[Any], form: str) -> str:
    text = encode(_Collectors(collectors)).decode("utf-8")
    return text[: -len(EOF)] if form == OPENMETRICS else text


@dataclass(frozen=True, slots=True, eq=False)
class _Collectors:
    """Some of a registry's collectors, for prometheus_client's encoder."""

    collectors: list[Any]

    def collect(self) -> Iterable[Any]:
        for collector in self.collectors:
            yield from collector.collect()


def _write_counter(reads: type[ScrapeReads], f: _Family, metric: Any, form: str, created: bool, out: list[str]) -> None:
    name, total = f.name, f.name + "_total"
    children = reads.children(metric)
    f.forget_removed(len(children))
    out.append(header(total if form == TEXT else name, f.documentation, "counter", form))
    later: list[str] = []
    for values, child in children:
        labels = f.labels(values)[0]
        value, exemplar, created_at = reads.counter(child)
        if form == TEXT:
            out.append(f"{total}{labels} {go_float(value)}\n")
            if created:
                later.append(f"{name}_created{labels} {go_float(created_at)}\n")
            continue
        line = f"{total}{labels} {go_float(value)}"
        out.append(f"{line}{exemplar_text(exemplar)}\n" if exemplar else f"{line}\n")
        if created:
            out.append(f"{name}_created{labels} {go_float(created_at)}\n")
    _created_family(f, later, out)


def _write_gauge(reads: type[ScrapeReads], f: _Family, metric: Any, form: str, created: bool, out: list[str]) -> None:
    children = reads.children(metric)
    f.forget_removed(len(children))
    out.append(header(f.name, f.documentation, "gauge", form))
    out.extend(f"{f.name}{f.labels(values)[0]} {go_float(reads.gauge(child))}\n" for values, child in children)


def _write_histogram(
    reads: type[ScrapeReads], f: _Family, metric: Any, form: str, created: bool, out: list[str]
) -> None:
    name, le, show_sum = f.name, f.le, f.show_sum
    bucket, count, total = f"{name}_bucket{{", f"{name}_count", f"{name}_sum"
    children = reads.children(metric)
    f.forget_removed(len(children))
    out.append(header(name, f.documentation, "histogram", form))
    later: list[str] = []
    append = out.append
    for values, child in children:
        labels, head, tail = f.labels(values)
        counts = reads.buckets(child)
        exemplars = reads.exemplars(child) if form == OPENMETRICS else ()
        acc = 0.0
        for index, amount in enumerate(counts):
            acc += amount
            line = f"{bucket}{head}{le[index]}{tail}}} {go_count(acc)}"
            exemplar = exemplars[index] if exemplars else None
            append(f"{line}{exemplar_text(exemplar)}\n" if exemplar else f"{line}\n")
        append(f"{count}{labels} {go_count(acc)}\n")
        amount_sum, created_at = reads.sum_created(child)
        if show_sum:
            append(f"{total}{labels} {go_float(amount_sum)}\n")
        if created:
            (later if form == TEXT else out).append(f"{name}_created{labels} {go_float(created_at)}\n")
    _created_family(f, later, out)


def _created_family(f: _Family, lines: list[str], out: list[str]) -> None:
    """The text format's ``_created`` samples: a gauge family of their own after the metric's."""
    if lines:
        out.append(header(f"{f.name}_created", f.documentation, "gauge", TEXT))
        out.extend(lines)


_WRITERS = {"counter": _write_counter, "gauge": _write_gauge, "histogram": _write_histogram}
_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    TEXT: text_exposition.generate_latest,
    OPENMETRICS: openmetrics_exposition.generate_latest,
}


def check_renderer(renderer: Renderer) -> None:
    """The scrape ``renderer`` writes of a throwaway registry is byte for byte prometheus_client's, in both formats."""
    from ..internals import Mismatch

    registry, ours = _check_registry()
    for accept in _CHECK_ACCEPTS:
        encoder, _ = text_exposition.choose_encoder(accept)
        form = _form(encoder, accept)
        if form is None:
            raise Mismatch(f"no form for {accept!r}")
        fast, public = renderer.render(registry, form, ours), encoder(registry)
        if fast != public:
            raise Mismatch(f"{accept or 'text'}: {_first_difference(fast, public)}")


_CHECK_ACCEPTS = (
    "",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
)


def _check_registry() -> tuple[CollectorRegistry, list[Any]]:
    """Every kind of family ours are, with odd values and labels, between collectors of other kinds."""
    from prometheus_client import Summary

    registry = CollectorRegistry()
    before = Counter("other_before", "Not ours.", ["a"], registry=registry)
    counter = Counter("check_requests", 'Help with \\ and "quotes"\nand a newline.', ["z", "a"], registry=registry)
    plain = Counter("check_plain", "No labels.", registry=registry)
    gauge = Gauge("check_gauge", "g", ["b"], registry=registry)
    labels = ["route", "method", "status"]
    histogram = Histogram("check_seconds", "h", labels, buckets=(0.1, 1.0, 1e7), registry=registry)
    negative = Histogram("check_delta", "h", ["x"], buckets=(-1.0, 0.0, 2.5), registry=registry)
    empty = Histogram("check_unused", "h", ["x"], registry=registry)
    Summary("other_after", "Not ours.", registry=registry).observe(2.0)
    before.labels("1").inc()
    odd = ('a"quote', "back\\slash", "new\nline", "ünï\u2028", "", "{},=")
    for index, text in enumerate(odd):
        counter.labels(text, str(index)).inc(index * 0.5)
        counter.labels(str(index), text).inc(1, {"trace_id": text, "span_id": "b" * 16})
        histogram.labels(text, "GET", "200").observe(index * 0.3)
        histogram.labels("/r", text, "500").observe(5.0, {"trace_id": "a" * 32})
        negative.labels(text).observe(-index)
    for index, value in enumerate((math.nan, math.inf, -math.inf, -0.0, 1e20, 1234567.0, 1e-7, 123456.5)):
        gauge.labels(str(index)).set(value)
    plain.inc(3)
    return registry, [counter, plain, gauge, histogram, negative, empty]


def _first_difference(fast: bytes, public: bytes) -> str:
    index = next((i for i, (a, b) in enumerate(zip(fast, public, strict=False)) if a != b), min(len(fast), len(public)))
    return f"{fast[index - 40 : index + 40]!r} != {public[index - 40 : index + 40]!r}"


def _form(encoder: Callable[..., bytes], accept: str | None) -> str | None:
    """TEXT or OPENMETRICS for what ``choose_encoder`` chose, or None when its escaping would change names."""
    escaping = getattr(encoder, "keywords", {}).get("escaping", openmetrics_exposition.UNDERSCORES)
    if escaping not in _ESCAPINGS:
        return None
    return OPENMETRICS if getattr(encoder, "func", encoder) is openmetrics_exposition.generate_latest else TEXT


def _public_render(registry: Any, form: str, ours: Iterable[Any]) -> bytes:
    return _ENCODERS[form](registry)


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
    form = _form(encoder, accept)
    if multiprocess:
        inventories = _Collectors(list(route_inventories(registry)))  # in no file: every worker reads the same URL map
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
