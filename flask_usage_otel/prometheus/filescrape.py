"""A scrape of a multiprocess directory that keeps what it decoded between scrapes.

prometheus_client's ``MultiProcessCollector`` reads every file of the directory at each scrape and
decodes every key of every file (a JSON text per sample). :class:`DirectoryScrape` writes the same
scrape, byte for byte (``check_directory_scrape`` and the tests compare them), from what it kept:

- a key is decoded once per process (its family, labels, help text, bucket bound);
- a file's entries (key and value position) are indexed once and extended as the file grows:
  a worker only ever appends keys, so a file with the same device and inode and a used length at
  least the last one's is that file grown; its values are read again at every scrape;
- the archives of dead workers (``multiprocess.compact_dead_worker``) are only ever replaced whole,
  under the directory's exclusive lock, which writes a new generation token into the lock file:
  while the token stays, their values are kept as well, so a folded directory costs a scrape the
  formatting only. A new token drops everything but the decoded keys.
- the order of families and series (the first time each is met in the directory's order) and
  the text before each value are kept while no file gains or loses a key.

Values are combined exactly as ``MultiProcessCollector`` combines them, file by file in the same
order: counters, histograms, summaries and ``sum`` gauges added, ``min``/``max`` gauges compared,
``mostrecent`` gauges by timestamp, ``all`` gauges per pid.
"""

from __future__ import annotations

import functools
import json
import mmap
import operator
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..internals import Mismatch, metric_file_entries, select
from .multiprocess import MULTIPROC_ENV, directory_lock, metric_files_with_data
from .textformat import TEXT, braced, go_count, go_float, header, label_pairs, le_parts, plain_names

Labels = tuple[tuple[str, str], ...]
_OTHER = 1 << 40
"""Slots from here on are gauges' that are not added up (``plan.others``); below it, sums."""
_STRIP_PID = ("min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent")


@dataclass(frozen=True, slots=True)
class _Key:
    """One decoded key: what ``MultiProcessCollector._read_metrics`` makes of it."""

    metric: str
    sample: str
    labels: Labels  # sorted
    help: str
    le: float | None  # a histogram bucket's bound
    without_le: Labels


def _decode(key: bytes) -> _Key:
    metric, sample, labels, help_text = json.loads(key.decode("utf-8"))
    pairs = tuple(sorted(labels.items()))
    le = float(labels["le"]) if "le" in labels else None
    return _Key(metric, sample, pairs, help_text, le, tuple(p for p in pairs if p[0] != "le"))


@dataclass(slots=True)
class _File:
    """One file's entries as indexed so far."""

    identity: tuple[int, int]  # device, inode
    used: int = 8
    keys: list[_Key] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # of each value among the file's doubles
    values: list[float] | None = None  # kept for an archive while the generation stays


@dataclass(slots=True)
class _Family:
    name: str
    help: str
    kind: str
    mode: str = ""
    groups: dict[Labels, dict[tuple[str, Labels], tuple[str, int]]] = field(default_factory=dict)
    buckets: dict[Labels, dict[float, int]] = field(default_factory=dict)


@dataclass(slots=True)
class _Plan:
    """What stays from scrape to scrape while no file gains or loses a key: slots, order, text."""

    sums: int  # slots added up (counters, histograms, summaries, sum gauges)
    others: list[str]  # the combining of each gauge slot: min, max, recent, set
    slots: list[list[int]]  # per file, of each entry
    lines: list[tuple[Any, ...]]  # what to write, in order
    archive_vectors: dict[int, list[float]] = field(default_factory=dict)  # per file index


class DirectoryScrape:
    """The text-format scrape of one multiprocess directory; kept by the process between scrapes."""

    def __init__(self, path: str, entries: Callable[..., Any] = metric_file_entries) -> None:
        self.path = path
        self._entries = entries
        self._lock = threading.Lock()
        self._keys: dict[bytes, _Key] = {}
        self._files: dict[str, _File] = {}
        self._token: bytes | None = None
        self._plan: _Plan | None = None
        self._plan_id: tuple[Any, ...] = ()

    def render(self) -> bytes | None:
        """The scrape, as ``generate_latest`` writes ``MultiProcessCollector``'s; None when a name needs escaping."""
        with self._lock, directory_lock(self.path, shared=True) as lock:
            token = os.pread(lock, 64, 0)
            if token != self._token:  # a fold replaced archives and removed files: index them again
                self._token, self._files, self._plan_id = token, {}, ()
            read = [self._read(name) for name in metric_files_with_data(self.path)]
        files = [r for r in read if r is not None]
        plan_id = tuple((name, f.identity, len(f.keys)) for name, f, _ in files)
        if plan_id != self._plan_id:
            self._plan = _plan(files)
            self._plan_id = plan_id if self._plan is not None else ()
        if self._plan is None:
            return None
        if len(self._keys) > 4 * sum(len(f.keys) for _, f, _ in files) + 1024:
            self._keys.clear()  # keys of files long gone
        return _write(self._plan, files)

    def _read(self, name: str) -> tuple[str, _File, list[float]] | None:
        base = os.path.basename(name)
        try:
            with open(name, "rb") as fp:
                stat = os.fstat(fp.fileno())
                known = self._files.get(base)
                if known is not None and known.values is not None and known.identity == (stat.st_dev, stat.st_ino):
                    return base, known, known.values
                data = fp.read(mmap.PAGESIZE)
                used = int.from_bytes(data[:4], "little", signed=True) if len(data) >= 8 else 0
                if used > len(data):
                    data += fp.read(used - len(data))
        except FileNotFoundError:  # a live gauge file that mark_process_dead just removed
            return None
        identity = (stat.st_dev, stat.st_ino)
        if known is None or known.identity != identity or used < known.used or base.startswith("gauge_live"):
            known = _File(identity)  # live gauges' files are removed outside the lock: never kept
        if used > known.used:
            entries, known.used = self._entries(data, known.used)
            cache = self._keys
            for key, index in entries:
                decoded = cache.get(key)
                if decoded is None:
                    decoded = cache[key] = _decode(key)
                known.keys.append(decoded)
                known.indices.append(index)
        self._files[base] = known
        view = memoryview(data)[: known.used - known.used % 8].cast("d")
        values = [view[i] for i in known.indices]
        if base.startswith("gauge_") and _mode(base) in ("mostrecent", "livemostrecent"):
            values = [*values, *(view[i + 1] for i in known.indices)]  # the timestamps after the values
        elif base.endswith("_archive.db"):
            known.values = values
        return base, known, values


def _mode(base: str) -> str:
    return base.split("_")[1]


def _plan(files: list[tuple[str, _File, list[float]]]) -> _Plan | None:
    """Families, series and slots in the order ``MultiProcessCollector.merge`` meets them."""
    families: dict[str, _Family] = {}
    for base, f, _ in files:
        kind = base.split("_")[0]
        for key in f.keys:
            family = families.get(key.metric)
            if family is None:
                if kind not in ("counter", "gauge", "histogram", "summary"):
                    return None
                family = families[key.metric] = _Family(key.metric, key.help, kind)
            elif family.kind != kind:
                return None  # one name in files of two types: left to prometheus_client
            if kind == "gauge":
                family.mode = _mode(base)
    sums, others, slots = 0, [], []
    for base, f, _ in files:
        pid = base.split("_")[2][:-3] if base.startswith("gauge_") else ""
        file_slots = []
        for key in f.keys:
            family = families[key.metric]
            if family.kind == "histogram" and key.le is not None:
                bounds = family.buckets.setdefault(key.without_le, {})
                slot = bounds.get(key.le)
                if slot is None:
                    slot = bounds[key.le] = sums
                    sums += 1
                file_slots.append(slot)
                continue
            labels = key.labels
            if family.kind == "gauge":
                labels = (*labels, ("pid", pid))
                if family.mode in _STRIP_PID:
                    labels = tuple(p for p in labels if p[0] != "pid")
            group = family.groups.setdefault(labels, {})
            known = group.get((key.sample, labels))
            if known is None:
                combine = _combining(family)
                index = sums if combine == "sum" else len(others) + _OTHER
                if combine == "sum":
                    sums += 1
                else:
                    others.append(combine)
                known = group[(key.sample, labels)] = (combine, index)
            file_slots.append(known[1])
        slots.append(file_slots)
    lines = _lines(families.values())
    return None if lines is None else _Plan(sums, others, slots, lines)


def _combining(family: _Family) -> str:
    if family.kind != "gauge":
        return "sum"
    mode = family.mode.removeprefix("live")
    return mode if mode in ("sum", "min", "max") else "recent" if mode == "mostrecent" else "set"


def _lines(families: Any) -> list[tuple[Any, ...]] | None:
    """What the scrape writes: headers, (prefix, slot) for a sample, a bucket run with its count."""
    lines: list[tuple[Any, ...]] = []
    for family in families:
        names = {name for labels in family.groups for name, _ in labels}
        names.update(name for labels in family.buckets for name, _ in labels)
        if not plain_names(family.name, names):
            return None
        title = f"{family.name}_total" if family.kind == "counter" else family.name
        lines.append(("header", header(title, family.help, family.kind, TEXT)))
        for labels in family.buckets:
            family.groups.setdefault(labels, {})
        for labels, group in family.groups.items():
            for (sample, sample_labels), (_, slot) in group.items():
                lines.append(("sample", f"{sample}{braced(label_pairs(sorted(sample_labels)))} ", slot))
            bounds = family.buckets.get(labels)
            if bounds:
                pairs = label_pairs(labels)  # sorted: le goes where its name sorts
                before = sum(1 for name, _ in labels if name < "le")
                ordered = sorted(bounds.items())
                parts = le_parts([b for b, _ in ordered], before, len(pairs) - before)
                head, tail = ",".join(pairs[:before]), ",".join(pairs[before:])
                bucket = f"{family.name}_bucket{{{head}"
                run = [(f"{bucket}{part}{tail}}} ", slot) for part, (_, slot) in zip(parts, ordered, strict=True)]
                lines.append(("buckets", run, f"{family.name}_count{braced(pairs)} "))
    return lines


def _write(plan: _Plan, files: list[tuple[str, _File, list[float]]]) -> bytes:
    sums = [0.0] * plan.sums
    others: list[float | None] = [None] * len(plan.others)
    stamps = [0.0] * len(plan.others)
    for index, (base, _, values) in enumerate(files):
        slots = plan.slots[index]
        if not base.startswith("gauge_"):
            vector = plan.archive_vectors.get(index)
            if vector is None and base.endswith("_archive.db") and len(set(slots)) == len(slots):
                vector = plan.archive_vectors[index] = [0.0] * plan.sums
                for slot, value in zip(slots, values, strict=True):
                    vector[slot] = value
            if vector is not None:  # x + 0.0 is x for every x a sum can be (never -0.0)
                sums = list(map(operator.add, sums, vector))
            else:
                for slot, value in zip(slots, values, strict=True):
                    sums[slot] += value
            continue
        _combine_gauges(plan, slots, values, sums, others, stamps)
    out: list[str] = []
    for line in plan.lines:
        if line[0] == "header":
            out.append(line[1])
        elif line[0] == "sample":
            slot = line[2]
            value = sums[slot] if slot < _OTHER else others[slot - _OTHER]
            if value is not None:
                out.append(f"{line[1]}{go_float(value)}\n")
        else:
            acc = 0.0
            for prefix, slot in line[1]:
                acc += sums[slot]
                out.append(f"{prefix}{go_count(acc)}\n")
            out.append(f"{line[2]}{go_count(acc)}\n")
    return "".join(out).encode("utf-8")


def _combine_gauges(
    plan: _Plan, slots: list[int], values: list[float], sums: list[float], others: list[Any], stamps: list[float]
) -> None:
    """One gauge file's values into the slots, as ``MultiProcessCollector._accumulate_metrics`` combines them."""
    count = len(slots)
    for position, slot in enumerate(slots):
        value = values[position]
        if slot < _OTHER:
            sums[slot] += value
            continue
        slot -= _OTHER
        combine, current = plan.others[slot], others[slot]
        if combine == "recent":
            stamp = float(values[count + position] or 0)  # the timestamps follow the values
            if stamps[slot] < stamp:
                others[slot], stamps[slot] = value, stamp
        elif current is None or combine == "set" or (value > current if combine == "max" else value < current):
            others[slot] = value


_scrapes: dict[str, DirectoryScrape] = {}
_scrapes_lock = threading.Lock()


def scrape_directory(path: str | None = None) -> bytes | None:
    """The text-format scrape of the multiprocess directory; None when prometheus_client must write it."""
    if not directory_scrape_usable():
        return None
    path = path if path is not None else os.environ[MULTIPROC_ENV]
    with _scrapes_lock:
        scrape = _scrapes.get(path)
        if scrape is None:
            scrape = _scrapes[path] = DirectoryScrape(path)
    return scrape.render()


def check_directory_scrape(entries: Callable[..., Any] = metric_file_entries) -> None:
    """Files of every type and gauge mode, live and folded: the scrape is prometheus_client's, twice over."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from .multiprocess import LockedMultiProcessCollector, compact_dead_worker

    def write(path: str, name: str, items: list[tuple[str, str, dict[str, str], float]], stamp: float = 0.0) -> None:
        out = MmapedDict(os.path.join(path, name))
        try:
            for metric, sample, labels, value in items:
                out.write_value(
                    mmap_key(metric, sample, list(labels), list(labels.values()), 'a "help"\\'), value, stamp
                )
        finally:
            out.close()

    with tempfile.TemporaryDirectory(prefix="flask-usage-check-") as path:
        for pid in (1, 2, 3):
            odd = {"route": f'/r{pid}"\\\n', "method": "GET"}
            write(path, f"counter_{pid}.db", [("c", "c_total", odd, pid * 0.1), ("c", "c_total", {"route": "/"}, 1.0)])
            bucket = [("h", "h_bucket", {**odd, "le": le}, pid * 1.0) for le in ("0.1", "1.0", "+Inf")]
            write(path, f"histogram_{pid}.db", [("h", "h_sum", odd, pid * 0.7), *bucket])
            for mode in ("max", "min", "livesum", "mostrecent", "all"):
                gauge = [(f"g_{mode}", f"g_{mode}", {"m": "x"}, pid * (-1.5) ** pid)]
                write(path, f"gauge_{mode}_{pid}.db", gauge, stamp=pid * 7 % 5)  # the newest: pid 2
        compact_dead_worker(path, 1)
        scrape = DirectoryScrape(path, entries)
        for _ in range(2):  # the second from what the first kept
            registry = CollectorRegistry()
            LockedMultiProcessCollector(registry, path)
            fast, public = scrape.render(), generate_latest(registry)
            if fast != public:
                raise Mismatch(f"{fast!r} != {public!r}")
            write(path, "counter_4.db", [("c", "c_total", {"route": "/"}, 2.5)])


@functools.cache
def directory_scrape_usable() -> bool:
    """Whether the directory's files can be read here (checked once, on first use: it writes files)."""
    return select(
        "prometheus_client's multiprocess file layout (read for /metrics)",
        "prometheus-client",
        lambda: check_directory_scrape(metric_file_entries),
        True,
        False,
    )
