"""Flask-Track-Usage's summary hooks: ``SQLStorage(..., hooks=[sumUrl, sumRemote, ...])``.

Each hook keeps hits and transferred bytes per hour, day and month for one key in the
tables ``{table}_{name}_{hourly|daily|monthly}`` (Flask-Track-Usage's names), one row per
period *and key value*. The counts are added by the storage writer, inside the
transaction that writes the batch's raw rows, with one upsert per table and batch
(see :mod:`flask_usage_otel.storage.summaries`). Read them with ``SQLStorage.get_sum``.

The class names keep Flask-Track-Usage's spelling so existing imports work.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .record import UsageRecord


class SummaryHook:
    """Base of the summary hooks; a subclass names its key and how a record gives it."""

    summary_name: ClassVar[str] = ""
    """The key column and the middle of the table names (``url`` in ``flask_usage_url_daily``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Flask-Track-Usage built hooks with the storage's keyword arguments: accepted and unused.
        pass

    def set_up(self, **kwargs: Any) -> None:
        """Flask-Track-Usage's set-up step; the storage creates the tables itself."""

    @staticmethod
    def key(record: UsageRecord) -> str | None:
        raise NotImplementedError

    def __call__(self, **kwargs: Any) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} is run by SQLStorage for each written batch; it is not called per request"
        )


class sumUrl(SummaryHook):  # Flask-Track-Usage's class names, kept so its imports work
    """Traffic per full URL (``request.url``)."""

    summary_name = "url"

    @staticmethod
    def key(record: UsageRecord) -> str | None:
        return record.url


class sumRemote(SummaryHook):
    """Traffic per client address (``remote_addr``, after anonymization when it is on)."""

    summary_name = "remote"

    @staticmethod
    def key(record: UsageRecord) -> str | None:
        return record.remote_addr


class sumUserAgent(SummaryHook):
    """Traffic per ``User-Agent`` header (the whole header, as Flask-Track-Usage's ``str(user_agent)``)."""

    summary_name = "useragent"

    @staticmethod
    def key(record: UsageRecord) -> str | None:
        return record.user_agent


class sumLanguage(SummaryHook):
    """Traffic per preferred language (the first tag of ``Accept-Language``)."""

    summary_name = "language"

    @staticmethod
    def key(record: UsageRecord) -> str | None:
        return record.language


class sumServer(SummaryHook):
    """Traffic per server (the Flask app's name)."""

    summary_name = "server"

    @staticmethod
    def key(record: UsageRecord) -> str | None:
        return record.server_name


ALL_HOOKS: tuple[type[SummaryHook], ...] = (sumUrl, sumRemote, sumUserAgent, sumLanguage, sumServer)

__all__ = ["ALL_HOOKS", "SummaryHook", "sumLanguage", "sumRemote", "sumServer", "sumUrl", "sumUserAgent"]
