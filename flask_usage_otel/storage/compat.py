"""Flask-Track-Usage's storage protocol: ``storage(data)`` callables and its ``Writer``/``Storage`` classes.

Flask-Track-Usage called every storage with one dict per request, on the request
thread. Here such a storage is wrapped in :class:`CallableStorage`, a batch storage
like any other, so it is called with the same dict but from the storage writer's
thread: a slow or failing storage never delays or breaks a response.

Anything given as a storage is checked by :func:`adapt_storages` at ``init_app``;
what cannot be used is refused there, with the reason.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from ..config import ConfigError
from ..record import UNMATCHED_ROUTE, UsageRecord

logger = logging.getLogger("flask_usage_otel.storage")

_ERROR_LOG_INTERVAL = 60.0


class LegacyUserAgent:
    """What Flask-Track-Usage's ``data["user_agent"]`` was (Werkzeug's ``UserAgent``): the header and its parts.

    ``str()`` gives the raw header, as it did; ``browser``, ``platform`` and ``version`` come from
    this package's parser (Werkzeug 2.1 and later gave None), ``language`` from ``Accept-Language``.
    """

    __slots__ = ("browser", "language", "platform", "string", "version")

    def __init__(
        self,
        string: str | None,
        browser: str | None = None,
        platform: str | None = None,
        version: str | None = None,
        language: str | None = None,
    ) -> None:
        self.string = string or ""
        self.browser = browser
        self.platform = platform
        self.version = version
        self.language = language

    def to_header(self) -> str:
        return self.string

    def __str__(self) -> str:
        return self.string

    def __bool__(self) -> bool:
        return bool(self.string)

    def __repr__(self) -> str:
        return f"<LegacyUserAgent {self.string!r}>"


def legacy_data(record: UsageRecord) -> dict[str, Any]:
    """The dict Flask-Track-Usage 2.0 handed to each storage for this request (a new dict per call)."""
    ua = record.ua
    url = record.url
    # Flask-Track-Usage's timestamp: time.mktime() of the naive UTC time, so the
    # local UTC offset is folded in; its SQLStorage undid it with fromtimestamp().
    naive_utc = datetime.fromtimestamp(record.timestamp, timezone.utc).replace(tzinfo=None)
    return {
        "url": url,
        "user_agent": LegacyUserAgent(record.user_agent, ua.browser, ua.platform, ua.version, record.language),
        "server_name": record.server_name,
        "blueprint": record.blueprint,
        # request.view_args: None when no URL rule matched, else the rule's arguments.
        "view_args": None if record.route == UNMATCHED_ROUTE else dict(record.view_args),
        "status": record.status,
        "remote_addr": record.remote_addr,
        "xforwardedfor": record.xforwardedfor,
        "authorization": record.authorization,
        "ip_info": dict(record.ip_info) if record.ip_info else None,
        "path": record.path,
        "speed": float(record.speed),
        "date": int(time.mktime(naive_utc.timetuple())),
        # Flask-Track-Usage's "content_length" is the response's Content-Length.
        "content_length": record.response_size,
        "request": f"{record.method} {url} {record.protocol}",
        "url_args": record.url_args,
        "username": record.username,
        "track_var": dict(record.track_var),
    }


class _BaseWritable:
    """Flask-Track-Usage's base of storage classes: ``set_up`` takes the constructor's
    arguments, ``store(data)`` takes one request's dict, calling the object stores and runs its hooks.

    Subclass :class:`Writer` or :class:`Storage` exactly as with Flask-Track-Usage; instances
    are called from the storage writer's thread, never from the request.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.set_up(*args, **kwargs)
        kwargs["_parent_class_name"] = type(self).__name__
        kwargs["_parent_self"] = self
        self._post_storage_hooks: list[Any] = []
        for hook in kwargs.get("hooks") or []:
            if getattr(hook, "summary_name", None) is not None:
                raise TypeError(
                    f"{getattr(hook, '__name__', type(hook).__name__)} keeps its counts in SQL tables: "
                    "give it to SQLStorage(hooks=[...]), not to a custom storage"
                )
            self._post_storage_hooks.append(hook(**kwargs) if inspect.isclass(hook) else hook)
        for hook in self._post_storage_hooks:
            set_up = getattr(hook, "set_up", None)
            if set_up is not None:
                set_up(**kwargs)

    def set_up(self, *args: Any, **kwargs: Any) -> None:
        """Set the instance up from the constructor's arguments (override it)."""

    def store(self, data: dict[str, Any]) -> Any:
        """Store one request's dict (override it)."""
        raise NotImplementedError("store must be implemented.")

    def get_sum(
        self,
        hook: Any,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        limit: int = 500,
        page: int = 1,
        target: Any = None,
    ) -> Any:
        """Summary data of a hook (override it); None by default, as in Flask-Track-Usage."""
        return None

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.store(data)
        data["_parent_class_name"] = type(self).__name__
        data["_parent_self"] = self
        for hook in self._post_storage_hooks:
            hook(**data)
        return data


class Writer(_BaseWritable):
    """A write-only storage (Flask-Track-Usage's ``flask_track_usage.storage.Writer``)."""


class Storage(_BaseWritable):
    """A storage that can also read back (Flask-Track-Usage's ``flask_track_usage.storage.Storage``).

    Not to be confused with :class:`flask_usage_otel.UsageStorage`, the protocol of batch storages
    such as :class:`~flask_usage_otel.storage.sql.SQLStorage`.
    """

    def _get_usage(
        self, start_date: datetime | None = None, end_date: datetime | None = None, limit: int = 500, page: int = 1
    ) -> list[dict[str, Any]]:
        raise NotImplementedError("get_usage must be implemented.")

    def get_usage(
        self, start_date: datetime | None = None, end_date: datetime | None = None, limit: int = 500, page: int = 1
    ) -> list[dict[str, Any]]:
        """Rows from ``_get_usage``, checked to be a list of dicts."""
        raw = self._get_usage(start_date, end_date, limit, page)
        if type(raw) is not list or any(type(item) is not dict for item in raw):
            raise TypeError("_get_usage must return a list of dicts")
        return raw


class CallableStorage:
    """A batch storage that calls a Flask-Track-Usage storage ``target(data)`` once per record.

    Runs on the storage writer's thread. A call that raises costs that one record: it is
    logged (once a minute at most) and counted by the writer as ``storage_error``; the batch
    goes on and is never retried, so no record reaches the target twice.
    """

    def __init__(self, target: Callable[[dict[str, Any]], Any]) -> None:
        self.target = target
        self.name = getattr(target, "__qualname__", None) or type(target).__qualname__
        self.rows_failed = 0
        self._last_error_log = -_ERROR_LOG_INTERVAL

    def __repr__(self) -> str:
        return f"CallableStorage({self.target!r})"

    def store(self, records: Sequence[UsageRecord]) -> int:
        """Call the target with each record's dict; the number of calls that raised."""
        target = self.target
        failed = 0
        for record in records:
            try:
                target(legacy_data(record))
            except Exception as exc:
                failed += 1
                self._failed(exc)
        return failed

    def _failed(self, exc: Exception) -> None:
        self.rows_failed += 1
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            logger.warning("flask-usage-otel storage %s failed; its record is lost", self.name, exc_info=exc)

    @staticmethod
    def is_transient_error(exc: BaseException) -> bool:
        return False  # store() raises nothing of its own; whatever escapes is a bug, not a database to wait for

    def get_usage(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """The target's own ``get_usage`` (a Flask-Track-Usage ``Storage`` subclass has one)."""
        get_usage = getattr(self.target, "get_usage", None)
        if get_usage is None:
            raise RuntimeError(f"storage {self.name} has no get_usage (a Writer only writes)")
        return get_usage(*args, **kwargs)

    def get_sum(self, *args: Any, **kwargs: Any) -> Any:
        get_sum = getattr(self.target, "get_sum", None)
        if get_sum is None:
            raise RuntimeError(f"storage {self.name} has no get_sum")
        return get_sum(*args, **kwargs)


def adapt_storages(storages: Sequence[Any]) -> list[Any]:
    """Check each storage given to ``TrackUsage`` and wrap Flask-Track-Usage-style ones.

    - an object with ``store(records)`` that is not callable (``SQLStorage``, your own): used as it is;
    - anything callable (a function, a ``Writer``/``Storage`` subclass instance, an object with
      ``__call__``): called as ``storage(data)`` with Flask-Track-Usage's dict, from the writer thread;
    - anything else is refused.

    :raises ConfigError: (key ``storage``) a storage cannot be used; the message says why.
    """
    adapted: list[Any] = []
    for index, storage in enumerate(storages):
        where = f"storage #{index + 1} ({storage!r})"
        if storage is None:
            raise ConfigError("storage", f"storage #{index + 1} is None")
        if inspect.isclass(storage):
            raise ConfigError(
                "storage", f"{where} is a class, not an instance: pass {storage.__name__}(...), not {storage.__name__}"
            )
        if callable(storage):
            _check_takes_one_argument(storage, where)
            adapted.append(CallableStorage(storage))
        elif callable(getattr(storage, "store", None)):
            adapted.append(storage)
        else:
            raise ConfigError(
                "storage",
                f"{where} is neither callable (a Flask-Track-Usage storage, called with each request's dict) "
                "nor an object with a store(records) method",
            )
    return adapted


def _check_takes_one_argument(storage: Callable[..., Any], where: str) -> None:
    try:
        signature = inspect.signature(storage)
    except (TypeError, ValueError):  # a builtin without a signature: it will tell at call time
        return
    try:
        signature.bind({})
    except TypeError as exc:
        raise ConfigError(
            "storage", f"{where} is called with one argument (the request's dict) but cannot take it: {exc}"
        ) from None
