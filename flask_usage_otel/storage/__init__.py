"""Persistence of raw usage records (optional: install the ``sql`` extra for SQLStorage).

``Storage`` and ``Writer`` here are Flask-Track-Usage's base classes, so code written for
``flask_track_usage.storage`` works after renaming the import; the protocol of batch
storages (``store(records)``) is :class:`flask_usage_otel.UsageStorage`.
"""

from .compat import Storage, Writer

__all__ = ["Storage", "Writer"]
