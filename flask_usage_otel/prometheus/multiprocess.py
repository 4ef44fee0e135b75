"""Prometheus multiprocess mode (gunicorn): the directory check, and dead workers' files compacted.

:func:`multiprocess_dir` checks ``PROMETHEUS_MULTIPROC_DIR`` at ``init_app``.

Dead gunicorn workers' metric files are folded into one archive per metric type.

In multiprocess mode every worker writes its own ``{type}_{pid}.db`` files in
``PROMETHEUS_MULTIPROC_DIR`` and every scrape merges every file. Counter and
histogram files of dead workers must stay (their counts are part of the totals),
so with gunicorn's ``max_requests`` the directory grows by a few files per worker
generation and each scrape gets slower. :func:`compact_dead_worker` adds a dead
worker's values into ``{type}_archive.db`` (one file per type and gauge mode)
and deletes its files, so the directory holds the live workers' files plus a
fixed handful of archives.

Totals stay exact and never go backwards: the archive is rebuilt in a temporary
file, renamed over the old one and the worker's files deleted, all while holding
an exclusive ``flock`` on a lock file in the directory; :class:`LockedMultiProcessCollector`
reads the directory under a shared lock of the same file, so a scrape sees either
the worker's files or the archive that holds their values, never both or neither.

How each kind folds (as ``MultiProcessCollector`` would have merged them):

- counters, histograms and summaries: summed per sample;
- gauges in ``sum`` / ``max`` / ``min`` / ``mostrecent`` mode: summed / max / min / newest;
- gauges in a ``live*`` mode: already deleted by ``mark_process_dead``;
- gauges in ``all`` mode: deleted, since that mode labels each value with its pid
  and a dead pid's last value is no current measurement.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.multiprocess import MultiProcessCollector

from ..config import ConfigError
from ..internals import (
    metric_file_items,
    metric_files_foldable,
    single_process_values,
    write_metric_file,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LOCK_FILE = ".flask_usage_compaction.lock"
"""In the multiprocess directory; not ``*.db``, so no collector ever reads it."""

ARCHIVE_ID = "archive"
"""Stands where a pid would in the archive files' names: ``counter_archive.db``."""

_SUMMED_TYPES = ("counter", "histogram", "summary")
_FOLDED_GAUGE_MODES = ("sum", "max", "min", "mostrecent")
_DROPPED_GAUGE_MODES = ("all",)


@dataclass(frozen=True, slots=True)
class Compaction:
    """What one :func:`compact_dead_worker` call did."""

    files_folded: int
    files_deleted: int
    samples: int


@contextlib.contextmanager
def directory_lock(path: str, *, shared: bool) -> Iterator[int]:
    """Hold the directory's compaction lock: shared for reading, exclusive for compacting; yields its descriptor.

    The lock file holds the directory's generation: a token each fold writes anew, so that a scrape
    knows whether the archives, and the set of dead workers' files, are what it read last time.
    """
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class LockedMultiProcessCollector(MultiProcessCollector):
    """``MultiProcessCollector`` that reads the directory under the compaction lock (shared).

    It also skips empty files: a worker that is starting creates its file empty and only
    then sizes it, and prometheus_client fails the whole scrape on a file read in between.
    """

    def __init__(self, registry: Any, path: str | None = None) -> None:
        super().__init__(None, path)  # checks the directory (the variable's, when no path is given)
        self.directory: str = path if path is not None else os.environ[MULTIPROC_ENV]
        if registry:
            registry.register(self)

    def collect(self) -> Iterable[object]:
        with directory_lock(self.directory, shared=True):
            files = metric_files_with_data(self.directory)
            # Materialised inside the lock: merge reads every file before it returns.
            return list(self.merge(files, accumulate=True))


def compact_dead_worker(path: str, pid: int) -> Compaction:
    """Fold the metric files of the dead process ``pid`` into the archives of ``path``.

    Call it only once ``pid`` has exited (gunicorn's ``child_exit``): a live process
    would go on writing into a file that is about to be deleted. When prometheus_client's
    file format failed its check (:func:`~flask_usage_otel.internals.metric_files_foldable`),
    nothing is folded: scrapes add the dead worker's files up as they are, exactly the same.
    """
    folded = deleted = samples = 0
    if not metric_files_foldable():
        return Compaction(folded, deleted, samples)
    with directory_lock(path, shared=False) as lock:
        for kind in (*_SUMMED_TYPES, *(f"gauge_{mode}" for mode in _FOLDED_GAUGE_MODES)):
            dead = _existing(os.path.join(path, f"{kind}_{pid}.db"))
            if dead is None:
                continue
            samples += _fold(path, kind, dead)
            os.remove(dead)
            folded += 1
        for mode in _DROPPED_GAUGE_MODES:
            dead = _existing(os.path.join(path, f"gauge_{mode}_{pid}.db"))
            if dead is not None:
                os.remove(dead)
                deleted += 1
        if folded or deleted:
            os.ftruncate(lock, 0)
            os.pwrite(lock, os.urandom(8).hex().encode("ascii"), 0)
    return Compaction(folded, deleted, samples)


def archive_files(path: str) -> list[str]:
    """The archive files now in ``path``."""
    return sorted(glob.glob(os.path.join(glob.escape(path), f"*_{ARCHIVE_ID}.db")))


def metric_files_with_data(path: str) -> list[str]:
    """The files ``MultiProcessCollector.collect`` globs, in its (directory) order, but those still empty.

    A scrape's families and series come in the order they are first met in this list.
    """
    return [f for f in glob.glob(os.path.join(path, "*.db")) if _has_data(f)]


def _has_data(filename: str) -> bool:
    try:
        return os.stat(filename).st_size > 0
    except FileNotFoundError:  # a live gauge file that mark_process_dead just removed
        return False


def _existing(filename: str) -> str | None:
    return filename if os.path.exists(filename) else None


def _fold(path: str, kind: str, dead_file: str) -> int:
    """Rewrite ``{kind}_archive.db`` as itself plus ``dead_file``; returns the archive's sample count."""
    archive = os.path.join(path, f"{kind}_{ARCHIVE_ID}.db")
    mode = kind.partition("_")[2]  # "" for counters, histograms and summaries
    merged: dict[str, tuple[float, float]] = {}
    sources = [archive, dead_file] if os.path.exists(archive) else [dead_file]
    for source in sources:
        for key, value, timestamp in metric_file_items(source):
            current = merged.get(key)
            merged[key] = (value, timestamp) if current is None else _combine(mode, current, (value, timestamp))
    # Written beside the archive under a name no collector globs, then renamed over it:
    # a crash leaves the old archive or the new one, never half of one.
    temporary = os.path.join(path, f".{kind}_{ARCHIVE_ID}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)
    write_metric_file(temporary, ((key, value, timestamp) for key, (value, timestamp) in merged.items()))
    os.replace(temporary, archive)
    return len(merged)


def _combine(mode: str, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    if mode == "max":
        return a if a[0] >= b[0] else b
    if mode == "min":
        return a if a[0] <= b[0] else b
    if mode == "mostrecent":
        return a if a[1] >= b[1] else b
    return a[0] + b[0], max(a[1], b[1])  # counters, histograms, summaries, sum gauges


def multiprocess_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR`` when set, after checking it is a writable directory."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if not os.path.isdir(path):
        raise ConfigError(MULTIPROC_ENV, f"{path!r} is not a directory; create it before the app starts")
    if not os.access(path, os.W_OK):
        raise ConfigError(MULTIPROC_ENV, f"{path!r} is not writable by this process")
    if single_process_values():
        # prometheus_client chose its value store when first imported, before the variable
        # was set: every worker would count alone and /metrics would show a random worker.
        raise ConfigError(
            MULTIPROC_ENV,
            "was set after prometheus_client was imported; set it in the environment before the "
            "process starts (or at the top of gunicorn.conf.py, before any import that loads prometheus_client)",
        )
    return path
