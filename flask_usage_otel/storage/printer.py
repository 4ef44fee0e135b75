"""``PrintWriter``: prints each request's dict (Flask-Track-Usage's ``storage.printer``)."""

from __future__ import annotations

from typing import Any

from .compat import Writer


class PrintWriter(Writer):
    """Prints Flask-Track-Usage's dict of each request to standard output (handy while developing).

    Called from the storage writer's thread, so the line may appear just after the response.
    """

    def store(self, data: dict[str, Any]) -> None:
        print(data)


PrintStorage = PrintWriter
"""Flask-Track-Usage's older name."""

__all__ = ["PrintStorage", "PrintWriter"]
