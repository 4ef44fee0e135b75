"""What a :class:`~flask_usage_otel.writer.BatchWriter` talks to: the target its batches go to, the
observer it reports to, the batch itself, and why a row can be dropped."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

DROP_REASONS: tuple[str, ...] = ("queue_full", "rejected", "unserialisable", "storage_error", "timeout", "shutdown")
"""Why a row was not written:

- ``queue_full``: the queue held ``queue_size`` rows or ``queue_bytes`` bytes when the row arrived;
- ``rejected``: the target refused this row's data (a database constraint, a value, its encoding);
- ``unserialisable``: the request could not be turned into plain data, its record could not be
  built, or (alone among rows the target took) this row failed with a programming error;
- ``storage_error``: the target failed every row of a batch with a programming error (a bug in
  a storage or its subclass, not the database): logged with its traceback;
- ``timeout``: still unwritten when ``shutdown`` (process exit) ran out of time, the target being down or slow;
- ``shutdown``: the row arrived after the writer was shut down.
"""

PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    AttributeError,
    LookupError,
    NameError,
    AssertionError,
    NotImplementedError,
    RecursionError,
    ArithmeticError,
)
"""Errors that retrying cannot fix, raised by code rather than by a database or network: a row
the code cannot handle, or a bug in the target."""


class Observer:
    """Told what a writer does; every method is optional (a subclass overrides what it reports)."""

    def written(self, rows: int) -> None:
        """``rows`` were stored."""

    def dropped(self, reason: str, rows: int) -> None:
        """``rows`` were lost, for ``reason`` (one of ``DROP_REASONS``)."""

    def write_failed(self, timed_out: bool) -> None:
        """One attempt to store a batch failed (it is retried); ``timed_out``: it ran past its deadline."""

    def queue_depth(self, rows: int) -> None:
        """Rows now waiting (queued, or taken and not yet written)."""


class Target(Protocol):
    """Where a writer's batches go.

    ``store`` writes the whole batch or raises; a target that deals with each row on its own (and
    cannot undo the ones done) returns how many rows it lost instead. Optionally, ``is_transient_error(exc)`` tells a
    passing failure (retry the batch) from one about the rows (write them one by one, drop the
    ones refused); ``describe_error(exc)`` says what went wrong for the log, never with row values.
    """

    def store(self, batch: Sequence[Any]) -> int | None: ...


class Batch(list[Any]):
    """The records of one ``store`` call, with an id that a retry of the same batch keeps."""

    __slots__ = ("batch_id",)

    def __init__(self, records: Iterable[Any] = (), batch_id: str | None = None) -> None:
        super().__init__(records)
        self.batch_id = batch_id or uuid.uuid4().hex
