"""``OutputWriter``: writes each request to a file-like object (Flask-Track-Usage's ``storage.output``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

from .compat import Writer


class OutputWriter(Writer):
    """Writes ``transform(data)`` for each request to ``output``.

    :param output: a writable file-like object (default ``sys.stderr``), flushed after each write.
    :param transform: turns Flask-Track-Usage's dict into the text written (default ``str``).
    :raises TypeError: ``output`` has no ``write`` or ``writable`` method.
    :raises ValueError: ``output`` is not writable.
    """

    def set_up(self, output: IO[str] | None = None, transform: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.transform: Callable[[dict[str, Any]], str] = transform if transform is not None else str
        if output is None:
            output = sys.stderr
        if not hasattr(output, "write"):
            raise TypeError("A file like object must have a write method")
        if not hasattr(output, "writable"):
            raise TypeError("A file like object must have a writable method")
        if not output.writable():
            raise ValueError("Provided file like object is not writable")
        self.flushable = hasattr(output, "flush")
        self.output = output

    def store(self, data: dict[str, Any]) -> None:
        self.output.write(self.transform(data))
        if self.flushable:
            self.output.flush()


__all__ = ["OutputWriter"]
