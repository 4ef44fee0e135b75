"""Other libraries' private internals, all in this one module, each checked once against the public API.

Each fast path here reads something a library does not promise to keep, and is chosen once (when
this module is imported; the multiprocess files' at first use) by a self-check that runs it beside
the library's public API on throwaway objects. When the check fails, the public API is used instead
and one WARNING on the ``flask_usage_otel`` logger names the internal and the library's version.
The rest of the package calls only the functions here. docs/development.md ("Other libraries'
internals") lists each internal, its check and fallback, and the known exceptions left where they
are; ``tests/test_internals.py`` breaks each one and shows the fallback does exactly the same.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import json
import logging
import math
import operator
import os
import platform
import struct
import tempfile
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as prometheus_metrics
from prometheus_client import values as prometheus_values
from prometheus_client.samples import Exemplar
from werkzeug.wsgi import ClosingIterator

logger = logging.getLogger("flask_usage_otel")

T = TypeVar("T")
_int_at = struct.Struct("i").unpack_from
Adder = Callable[[float], None]
ExemplarAdder = Callable[[float, dict[str, str], float], None]


class Mismatch(Exception):
    """A fast path's result differs from the public API's."""


def library_version(distribution: str) -> str:
    if distribution == "python":
        return platform.python_version()
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def select(internal: str, library: str, check: Callable[[], None], fast: T, fallback: T) -> T:
    """``fast`` when ``check()`` passes; otherwise ``fallback``, with one warning that says why."""
    try:
        check()
    except Exception as exc:  # any failure of the check means the internal is not what we know
        logger.warning(
            "%s of %s %s failed its check against the public API (%s: %s); using the public API instead",
            internal,
            library,
            library_version(library),
            type(exc).__name__,
            exc,
        )
        return fallback
    return fast


def _expect(fast: object, public: object, what: str) -> None:
    if fast != public:
        raise Mismatch(f"{what}: {fast!r} != {public!r}")


# -- prometheus_client: value cells -----------------------------------------------------------


class PrometheusCells:
    """Counting straight into the labelled children's value cells: what ``inc``/``observe`` touch,
    without their per-call checks. The bucket is ``bisect_left`` over the histogram's bounds, the
    first bound >= the amount, as ``Histogram.observe`` picks it."""

    @staticmethod
    def counter_adder(child: Any) -> Adder:
        return child._value.inc  # type: ignore[no-any-return]

    @staticmethod
    def counter_exemplar_adder(child: Any) -> ExemplarAdder:
        cell = child._value

        def add(amount: float, labels: dict[str, str], now: float) -> None:
            cell.inc(amount)
            cell.set_exemplar(Exemplar(labels, amount, now))

        return add

    @staticmethod
    def histogram_observer(child: Any) -> Adder:
        sum_inc = child._sum.inc
        bucket_incs = tuple(bucket.inc for bucket in child._buckets)
        bounds = tuple(child._upper_bounds)

        def observe(amount: float) -> None:
            sum_inc(amount)
            bucket_incs[bisect_left(bounds, amount)](1)

        return observe

    @staticmethod
    def histograms_observer(first: Any, second: Any) -> Callable[[float, float], None]:
        first_sum, second_sum = first._sum.inc, second._sum.inc
        first_buckets = tuple(bucket.inc for bucket in first._buckets)
        second_buckets = tuple(bucket.inc for bucket in second._buckets)
        first_bounds, second_bounds = tuple(first._upper_bounds), tuple(second._upper_bounds)
        same_bounds = first_bounds == second_bounds

        def observe(first_amount: float, second_amount: float) -> None:
            first_sum(first_amount)
            second_sum(second_amount)
            index = bisect_left(first_bounds, first_amount)
            first_buckets[index](1)
            if not (same_bounds and second_amount == first_amount):  # else the same bucket: one search
                index = bisect_left(second_bounds, second_amount)
            second_buckets[index](1)

        return observe

    @staticmethod
    def histogram_exemplar_observer(child: Any) -> ExemplarAdder:
        sum_inc = child._sum.inc
        buckets = tuple(child._buckets)
        bounds = tuple(child._upper_bounds)

        def observe(amount: float, labels: dict[str, str], now: float) -> None:
            sum_inc(amount)
            bucket = buckets[bisect_left(bounds, amount)]
            bucket.inc(1)
            # The labels are fixed names and hex ids (63 characters), under the limit of 128
            # that Histogram.observe checks on every call.
            bucket.set_exemplar(Exemplar(labels, amount, now))

        return observe


def _with_exemplar(method: Callable[[float, dict[str, str]], None]) -> ExemplarAdder:
    # The public methods read the clock themselves.
    return lambda amount, labels, now: method(amount, labels)


class PrometheusPublic:
    """The same through ``Counter.inc``, ``Gauge.inc`` and ``Histogram.observe``."""

    counter_adder = staticmethod(lambda child: child.inc)
    counter_exemplar_adder = staticmethod(lambda child: _with_exemplar(child.inc))
    histogram_observer = staticmethod(lambda child: child.observe)

    @staticmethod
    def histograms_observer(first: Any, second: Any) -> Callable[[float, float], None]:
        def observe(first_amount: float, second_amount: float) -> None:
            first.observe(first_amount)
            second.observe(second_amount)

        return observe

    histogram_exemplar_observer = staticmethod(lambda child: _with_exemplar(child.observe))


_CHECK_BOUNDS = (0.1, 1.0, 5.0)
_CHECK_AMOUNTS = (0.0, 0.05, 0.1, 0.5, 1.0, 4.99, 5.0, 7.5, 1e9)


def check_prometheus_cells(fast: type[PrometheusCells] = PrometheusCells) -> None:
    """Count the same amounts through ``fast`` and the public API into two children; compare ``collect()``."""
    if not single_process_values():
        # Throwaway values would land in the shared directory: check what can be seen without them.
        parent = Histogram("flask_usage_check", "check", ["way"], buckets=_CHECK_BOUNDS, registry=None)
        _expect(list(parent._upper_bounds), [*_CHECK_BOUNDS, math.inf], "Histogram._upper_bounds")
        return
    registry = CollectorRegistry()
    counter = Counter("check", "check", ["way"], registry=registry)
    gauge = Gauge("check_gauge", "check", ["way"], registry=registry)
    histogram = Histogram("check_seconds", "check", ["way"], buckets=_CHECK_BOUNDS, registry=registry)
    second = Histogram("check_second_seconds", "check", ["way"], buckets=_CHECK_BOUNDS, registry=registry)
    labels = {"trace_id": "a" * 32, "span_id": "b" * 16}
    for way in (fast, PrometheusPublic):
        add, gauge_add = way.counter_adder(counter.labels(way.__name__)), way.counter_adder(gauge.labels(way.__name__))
        add_exemplar = way.counter_exemplar_adder(counter.labels(way.__name__))
        observe = way.histogram_observer(histogram.labels(way.__name__))
        observe_exemplar = way.histogram_exemplar_observer(histogram.labels(way.__name__))
        observe_both = way.histograms_observer(histogram.labels(way.__name__), second.labels(way.__name__))
        for amount in _CHECK_AMOUNTS:
            add(1)
            gauge_add(1)
            gauge_add(-0.5)
            observe(amount)
            observe_both(amount, amount)
            observe_both(amount, amount / 3)
            add_exemplar(1, labels, 1.0)
            observe_exemplar(amount / 2, labels, 1.0)
    seen: dict[str, list[tuple[object, ...]]] = {fast.__name__: [], PrometheusPublic.__name__: []}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue  # the children's creation times
            rest = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "way"))
            exemplar = None if sample.exemplar is None else (sample.exemplar.labels, sample.exemplar.value)
            seen[sample.labels["way"]].append((sample.name, rest, sample.value, exemplar))
    _expect(seen[fast.__name__], seen[PrometheusPublic.__name__], "collect()")
    if not seen[fast.__name__]:
        raise Mismatch("collect() gave no samples")


def select_prometheus_cells(fast: type[PrometheusCells] = PrometheusCells) -> type[PrometheusCells]:
    return select(
        "prometheus_client's value cells (_value, _sum, _buckets, _upper_bounds)",
        "prometheus-client",
        lambda: check_prometheus_cells(fast),
        fast,
        PrometheusPublic,  # type: ignore[arg-type]
    )


# -- prometheus_client: which value store -----------------------------------------------------


def check_value_class(module: Any = prometheus_values) -> None:
    """The store is ``values.ValueClass``, chosen by ``get_value_class``; a new metric takes it."""
    for name in ("ValueClass", "MutexValue", "get_value_class"):
        getattr(module, name)
    if module.ValueClass is module.MutexValue:  # single process: a metric here writes no file
        _expect(type(Counter("check", "check", registry=None)._value), module.MutexValue, "Counter's store")


def _fast_single_process_values() -> bool | None:
    return prometheus_values.ValueClass is prometheus_values.MutexValue  # type: ignore[no-any-return]


def _fast_choose_again() -> None:
    if prometheus_values.ValueClass is prometheus_values.MutexValue:
        prometheus_values.ValueClass = prometheus_values.get_value_class()


def _public_choose_again() -> None:
    # Importing the module again runs its choice again, from the environment as it is now.
    importlib.reload(prometheus_values)


def select_value_class(module: Any = prometheus_values) -> tuple[Callable[[], bool | None], Callable[[], None]]:
    return select(
        "prometheus_client's value store choice (values.ValueClass, MutexValue, get_value_class)",
        "prometheus-client",
        lambda: check_value_class(module),
        (_fast_single_process_values, _fast_choose_again),
        (lambda: None, _public_choose_again),
    )


_value_class = select_value_class()


def single_process_values() -> bool | None:
    """Whether prometheus_client counts in memory (not in multiprocess files); None when it cannot be told."""
    return _value_class[0]()


def choose_value_class_again() -> None:
    """Make prometheus_client choose its value store again, now that the environment may have changed."""
    _value_class[1]()


_prometheus = select_prometheus_cells()


def counter_adder(child: Any) -> Adder:
    """``add(amount)`` for a labelled ``Counter`` or ``Gauge`` child (a gauge's amount may be negative)."""
    return _prometheus.counter_adder(child)


def counter_exemplar_adder(child: Any) -> ExemplarAdder:
    """``add(amount, exemplar_labels, now)`` for a labelled ``Counter`` child."""
    return _prometheus.counter_exemplar_adder(child)


def histogram_observer(child: Any) -> Adder:
    """``observe(amount)`` for a labelled ``Histogram`` child."""
    return _prometheus.histogram_observer(child)


def histograms_observer(first: Any, second: Any) -> Callable[[float, float], None]:
    """``observe(a, b)`` into two ``Histogram`` children; one bucket search when they share buckets and ``a == b``."""
    return _prometheus.histograms_observer(first, second)


def histogram_exemplar_observer(child: Any) -> ExemplarAdder:
    """``observe(amount, exemplar_labels, now)`` for a labelled ``Histogram`` child."""
    return _prometheus.histogram_exemplar_observer(child)


# -- prometheus_client: multiprocess files ----------------------------------------------------


def metric_file_items(filename: str) -> list[tuple[str, float, float]]:
    """(key, value, timestamp) of every sample in a multiprocess file; only when :func:`metric_files_foldable`."""
    from prometheus_client.mmap_dict import MmapedDict

    return [(key, value, timestamp) for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(filename)]


def write_metric_file(filename: str, items: Iterable[tuple[str, float, float]]) -> None:
    """A new multiprocess file holding ``items``; only when :func:`metric_files_foldable`."""
    from prometheus_client.mmap_dict import MmapedDict

    out = MmapedDict(filename)
    try:
        for key, value, timestamp in items:
            out.write_value(key, value, timestamp)
    finally:
        out.close()


def check_metric_files(read: Callable[..., Any] | None = None, write: Callable[..., Any] | None = None) -> None:
    """A worker's file copied through ``read``/``write`` merges (the collector's public ``merge``) as the original."""
    from prometheus_client.mmap_dict import mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector

    items = [
        (mmap_key("check", "check_total", ["way"], ["a"], "check"), 3.0, 0.0),
        (mmap_key("check", "check_total", ["way"], ["b"], "check"), 0.5, 0.0),
    ]
    with tempfile.TemporaryDirectory(prefix="flask-usage-check-") as path:
        worker, copy = os.path.join(path, "counter_1.db"), os.path.join(path, "counter_2.db")
        read, write = read or metric_file_items, write or write_metric_file
        write_metric_file(worker, items)
        write(copy, read(worker))

        def merged(filename: str) -> list[tuple[str, list[tuple[str, dict[str, str], float]]]]:
            metrics = MultiProcessCollector.merge([filename], accumulate=True)
            return [(m.name, [(s.name, s.labels, s.value) for s in m.samples]) for m in metrics]

        _expect(merged(copy), merged(worker), "merge()")
        _expect(sorted(read(copy)), sorted(items), "read back")


@functools.cache
def metric_files_foldable() -> bool:
    """Whether dead workers' files can be folded into archives (checked once, on first use: it writes files)."""
    return select(
        "prometheus_client.mmap_dict.MmapedDict",
        "prometheus-client",
        check_metric_files,
        True,
        False,
    )


# -- prometheus_client: what a scrape reads (checked in prometheus/renderer.py and filescrape.py) --


class ScrapeReads:
    """What our ``/metrics`` renderer reads instead of ``collect()``'s samples: the registry's collectors
    in ``collect()``'s order (None when it adds a ``target_info``), a metric's children, their cells."""

    collectors = staticmethod(lambda reg: None if reg._target_info else list(reg._collector_to_names.copy()))
    children = staticmethod(lambda m: list(m._metrics.copy().items()) if m._labelnames else [((), m)])
    labelnames = staticmethod(lambda metric: tuple(metric._labelnames))
    bounds = staticmethod(lambda metric: tuple(metric._upper_bounds))
    created = staticmethod(lambda: prometheus_metrics._use_created)
    counter = staticmethod(lambda child: (child._value._value, child._value._exemplar, child._created))
    gauge = staticmethod(lambda child: child._value._value)
    buckets = staticmethod(lambda child: [cell._value for cell in child._buckets])
    exemplars = staticmethod(lambda child: [cell._exemplar for cell in child._buckets])
    sum_created = staticmethod(lambda child: (child._sum._value, child._created))


def metric_file_entries(data: bytes, start: int = 8) -> tuple[list[tuple[bytes, int]], int]:
    """(key, index of its value among the doubles) of a multiprocess file's entries from byte ``start``,
    and the used length: the layout ``mmap_dict._read_all_values`` reads."""
    used, pos, entries = _int_at(data, 0)[0], start, []
    while pos < used:
        length = _int_at(data, pos)[0]
        if length + pos > used:
            raise RuntimeError("Read beyond file size detected, file is corrupted.")
        value_at = pos + 4 + length + 8 - (length + 4) % 8
        entries.append((bytes(data[pos + 4 : pos + 4 + length]), value_at >> 3))
        pos = value_at + 16
    return entries, used


# -- Werkzeug: ClosingIterator's callbacks ----------------------------------------------------


_fast_callbacks: Callable[[ClosingIterator], Iterable[Callable[[], Any]]] = operator.attrgetter("_callbacks")


def _no_callbacks(body: ClosingIterator) -> Iterable[Callable[[], Any]]:
    return ()


def check_closing_iterator(callbacks: Callable[[ClosingIterator], Iterable[Any]] = _fast_callbacks) -> None:
    """The callbacks of Werkzeug's own bodies name their response, whose public attributes agree."""
    from werkzeug.test import create_environ
    from werkzeug.wrappers import Response

    first, second = (lambda: None), (lambda: None)
    _expect(list(callbacks(ClosingIterator([b""], [first, second])))[-2:], [first, second], "callbacks")
    for response in (Response(b"in memory"), Response(iter([b"streamed"]))):
        body = response(create_environ(), lambda status, headers, exc_info=None: None)
        owners = [getattr(callback, "__self__", None) for callback in callbacks(body)]
        _expect(response in owners, True, "the response closes its body")
        _expect(response.is_sequence, isinstance(response.response, list), "Response.is_sequence")
        close = getattr(body, "close", None)
        if close is not None:
            close()


def select_closing_iterator(
    fast: Callable[[ClosingIterator], Iterable[Any]] = _fast_callbacks,
) -> Callable[[ClosingIterator], Iterable[Callable[[], Any]]]:
    return select(
        "werkzeug.wsgi.ClosingIterator._callbacks",
        "werkzeug",
        lambda: check_closing_iterator(fast),
        fast,
        _no_callbacks,
    )


closing_iterator_callbacks = select_closing_iterator()
"""The close callbacks of a ``ClosingIterator``; none when they cannot be read (the body is then streamed)."""


# -- json: the C encoder ----------------------------------------------------------------------

_JSON = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))
_public_compact_json: Callable[[Any], str] = _JSON.encode


def _c_compact_json() -> Callable[[Any], str]:
    make_encoder = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make_encoder is None:
        raise Mismatch("no C accelerator in this Python")
    encode_text = json.encoder.encode_basestring  # the C function when the accelerator is there

    def compact_json(value: Any) -> str:
        # A fresh markers dict per call, as JSONEncoder does: circular data is refused, and threads share nothing.
        return "".join(make_encoder({}, str, encode_text, None, ":", ",", False, False, True)(value, 0))

    return compact_json


_CHECK_JSON: tuple[Any, ...] = (
    {"a": 1, "b": [1.5, None, True, False, -0.0, 10**30], "é": 'ü\u2028"\\\n\x00', "": {}},
    [{"nested": {"deeper": ["x", 2]}}, float("inf"), float("nan")],
    {1: "integer key", 2.5: "float key", None: "null key", False: "bool key"},
    {"default=str": {3}, "bytes": b"x"},
    "plain text",
    12,
)


def check_compact_json(make: Callable[[], Callable[[Any], str]] = _c_compact_json) -> None:
    encode = make()
    for value in _CHECK_JSON:
        _expect(encode(value), _public_compact_json(value), "JSON text")
    circular: list[Any] = []
    circular.append(circular)
    with contextlib.suppress(ValueError):
        encode(circular)
        raise Mismatch("circular data was not refused")


def select_compact_json(make: Callable[[], Callable[[Any], str]] = _c_compact_json) -> Callable[[Any], str]:
    return select(
        "json.encoder.c_make_encoder", "python", lambda: check_compact_json(make), make, lambda: _public_compact_json
    )()


compact_json: Callable[[Any], str] = select_compact_json()
"""``json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode``."""


# -- PyMySQL: the connection's socket ---------------------------------------------------------


def _pymysql_socket(connection: Any) -> Any:
    return getattr(connection, "_sock", None)


def check_pymysql_socket(read: Callable[[Any], Any] = _pymysql_socket) -> None:
    """A PyMySQL connection not connected yet has no socket, and ``close`` clears it: ``_sock`` is it."""
    from pymysql.connections import Connection

    connection = Connection(defer_connect=True)
    if not hasattr(connection, "_sock"):
        raise Mismatch("Connection has no _sock")
    _expect(read(connection), None, "the socket of a connection not connected")


def pymysql_socket(connection: Any) -> Any:
    """The socket of a PyMySQL connection, to cut a call blocked on it; None when unknown (then PyMySQL's own
    read timeout, the storage's ``statement_timeout``, ends the call)."""
    if _socket_reader[0] is None:
        _socket_reader[0] = select("pymysql Connection._sock", "pymysql", check_pymysql_socket, _pymysql_socket, None)
        if _socket_reader[0] is None:
            _socket_reader[0] = lambda connection: None
    return _socket_reader[0](connection)


_socket_reader: list[Callable[[Any], Any] | None] = [None]  # chosen at first use: PyMySQL is optional


# -- opentelemetry-semconv: the incubating names ----------------------------------------------

INCUBATING_NAMES = {
    "ENDUSER_ID": ("attributes.enduser_attributes", "enduser.id"),
    "HTTP_REQUEST_BODY_SIZE": ("attributes.http_attributes", "http.request.body.size"),
    "HTTP_RESPONSE_BODY_SIZE": ("attributes.http_attributes", "http.response.body.size"),
    "USER_AGENT_NAME": ("attributes.user_agent_attributes", "user_agent.name"),
    "USER_AGENT_SYNTHETIC_TYPE": ("attributes.user_agent_attributes", "user_agent.synthetic.type"),
    "USER_AGENT_VERSION": ("attributes.user_agent_attributes", "user_agent.version"),
    "HTTP_SERVER_ACTIVE_REQUESTS": ("metrics.http_metrics", "http.server.active_requests"),
}
"""Names the conventions have not declared stable yet, which ``opentelemetry-semconv`` keeps only in its
private ``_incubating`` modules: constant, module under ``_incubating``, the name the conventions give."""


def _semconv_incubating(constant: str) -> str:
    module, _ = INCUBATING_NAMES[constant]
    return getattr(importlib.import_module("opentelemetry.semconv._incubating." + module), constant)  # type: ignore[no-any-return]


def check_incubating_names(read: Callable[[str], str] = _semconv_incubating) -> None:
    """Each constant, read from ``opentelemetry.semconv._incubating``, is the name the conventions give."""
    for constant, (_, name) in INCUBATING_NAMES.items():
        _expect(read(constant), name, constant)


def incubating_name(constant: str) -> str:
    """``constant`` of ``opentelemetry.semconv._incubating`` (``ENDUSER_ID``): its value when semconv still
    has it as the conventions name it, else the conventions' name as written here."""
    if not _incubating_checked:
        select("the _incubating modules", "opentelemetry-semantic-conventions", check_incubating_names, None, None)
        _incubating_checked.append(True)
    return INCUBATING_NAMES[constant][1]


_incubating_checked: list[bool] = []  # checked at first use: OpenTelemetry is optional


# -- psycopg: the error of a libpq result -----------------------------------------------------


def _psycopg_error(result: Any, encoding: str) -> Exception:
    from psycopg import errors

    return errors.error_from_result(result, encoding=encoding)  # type: ignore[attr-defined,no-any-return]


def _public_psycopg_error(result: Any, encoding: str) -> Exception:
    """The error class ``errors.lookup`` gives for the result's SQLSTATE, with libpq's message."""
    from psycopg import errors, pq

    sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode("ascii", "replace")
    try:
        kind: type[Exception] = errors.lookup(sqlstate)
    except KeyError:
        kind = errors.DatabaseError
    return kind((result.error_message or b"").decode(encoding, "replace").strip())


def check_psycopg_error(result: Any, encoding: str, make: Callable[[Any, str], Exception] = _psycopg_error) -> None:
    """On the first failed result: the error is of the class ``errors.lookup`` gives, with the same SQLSTATE."""
    fast, public = make(result, encoding), _public_psycopg_error(result, encoding)
    _expect(type(fast), type(public), "the error class")
    _expect(getattr(fast, "sqlstate", None), getattr(public, "sqlstate", None), "the SQLSTATE")


def psycopg_error(result: Any, encoding: str) -> Exception:
    """The psycopg error of a failed libpq result (``psycopg.errors.error_from_result``, undocumented; else
    the class ``errors.lookup`` gives for its SQLSTATE with libpq's message, without the diagnostics)."""
    if _error_maker[0] is None:
        _error_maker[0] = select(
            "psycopg errors.error_from_result",
            "psycopg",
            lambda: check_psycopg_error(result, encoding),
            _psycopg_error,
            _public_psycopg_error,
        )
    return _error_maker[0](result, encoding)


_error_maker: list[Callable[[Any, str], Exception] | None] = [None]  # chosen at the first failed result
