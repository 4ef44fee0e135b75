"""Our own writer of a registry's scrape, byte for byte the one prometheus_client's encoders write.

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

import math
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from ..internals import Mismatch, ScrapeReads, single_process_values
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

# prometheus_client before 0.22 has no name escaping (and no such constants): its names are always legacy-safe.
_UNDERSCORES = getattr(openmetrics_exposition, "UNDERSCORES", "underscores")
_ESCAPINGS = (_UNDERSCORES, getattr(openmetrics_exposition, "ALLOWUTF8", "allow-utf-8"))
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
        encode = ENCODERS[form]
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
    text = encode(Collectors(collectors)).decode("utf-8")
    return text[: -len(EOF)] if form == OPENMETRICS else text


@dataclass(frozen=True, slots=True, eq=False)
class Collectors:
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
ENCODERS: dict[str, Callable[[Any], bytes]] = {
    TEXT: text_exposition.generate_latest,
    OPENMETRICS: openmetrics_exposition.generate_latest,
}


def check_renderer(renderer: Renderer) -> None:
    """The scrape ``renderer`` writes of a throwaway registry is byte for byte prometheus_client's, in both formats."""
    registry, ours = _check_registry()
    for accept in _CHECK_ACCEPTS:
        encoder, _ = text_exposition.choose_encoder(accept)
        form = form_of(encoder, accept)
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
    for index, value in enumerate(
        (math.nan, math.inf, -math.inf, -0.0, 1e20, 1234567.0, 1e-7, 123456.5, 2**53 + 1.0, 1e15)
    ):
        gauge.labels(str(index)).set(value)
    plain.inc(3)
    return registry, [counter, plain, gauge, histogram, negative, empty]


def _first_difference(fast: bytes, public: bytes) -> str:
    index = next((i for i, (a, b) in enumerate(zip(fast, public, strict=False)) if a != b), min(len(fast), len(public)))
    return f"{fast[index - 40 : index + 40]!r} != {public[index - 40 : index + 40]!r}"


def form_of(encoder: Callable[..., bytes], accept: str | None) -> str | None:
    """TEXT or OPENMETRICS for what ``choose_encoder`` chose, or None when its escaping would change names."""
    escaping = getattr(encoder, "keywords", {}).get("escaping", _UNDERSCORES)
    if escaping not in _ESCAPINGS:
        return None
    return OPENMETRICS if getattr(encoder, "func", encoder) is openmetrics_exposition.generate_latest else TEXT
