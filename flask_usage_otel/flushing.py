"""Flushing several sinks at once, each within the same deadline whatever the others do.

Flushing them one after the other would let one slow sink (a span exporter whose
collector is down) spend the whole deadline and cost every sink behind it its
last rows; gunicorn's worker exit and the process exit flush through here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sinks import Sink

logger = logging.getLogger("flask_usage_otel")


def flush_sinks(sinks: Sequence[Sink], timeout: float | None) -> bool:
    """Flush every sink in parallel; True when every one reported nothing left within ``timeout``."""
    if len(sinks) == 1:
        return _flush_one(sinks[0], timeout)
    results = [False] * len(sinks)

    def run(index: int, sink: Sink) -> None:
        results[index] = _flush_one(sink, timeout)

    threads = [
        threading.Thread(target=run, args=(i, sink), name=f"flask-usage-otel-flush-{sink.name}", daemon=True)
        for i, sink in enumerate(sinks)
    ]
    for thread in threads:
        thread.start()
    # Every sink got the same deadline from the start: waiting for one never shortens another's.
    for thread in threads:
        thread.join(None if timeout is None else timeout + 0.5)
    return all(results)


def _flush_one(sink: Sink, timeout: float | None) -> bool:
    try:
        return bool(sink.flush(timeout))
    except Exception:
        logger.exception("flask-usage-otel sink %r failed to flush", sink.name)
        return False
