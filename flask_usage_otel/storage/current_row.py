"""The row of a table with this release's layout, written out column by column.

Every table this release creates has every column of ``columns.COLUMNS`` at its full width,
and every row the writer sends to it goes through :func:`current_row`: on the writer's
thread, which shares the interpreter lock with the requests. Written out, each column costs
a few bytecodes; the general :class:`~flask_usage_otel.storage.row_builder.RowBuilder` (any
subset of columns, narrower widths: a Flask-Track-Usage table, a user's own) loops over the
columns and costs half as much again. Both give the same row for the same record
(``tests/storage/test_row_builder.py`` checks it on hostile records), and a column added to
``columns.COLUMNS`` fails that test until it is added here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..columns import COLUMN_LIMITS, COLUMN_WIDTHS
from ..request_text import first_language, full_url
from ..useragent import parse_user_agent
from .sql_text import MAX_CACHED_LANGUAGE, cached_language, clean_text, json_text, values_url

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..record import UsageRecord

CURRENT_ROW_COLUMNS: tuple[str, ...] = (
    # Text copied from the record, then text derived from it, then JSON, then plain values:
    # the order RowBuilder gives the full layout.
    "blueprint",
    "remote_addr",
    "xforwardedfor",
    "path",
    "username",
    "method",
    "route",
    "endpoint",
    "user_agent_raw",
    "server_name",
    "protocol",
    "exception",
    "trace_id",
    "span_id",
    "url",
    "ua_browser",
    "ua_platform",
    "ua_version",
    "ua_language",
    "synthetic_type",
    "view_args",
    "ip_info",
    "track_var",
    "status",
    "authorization",
    "speed",
    "datetime",
    "content_length",
    "response_size",
)
"""The columns of :func:`current_row`'s tuple, in order."""

_BLUEPRINT = COLUMN_WIDTHS["blueprint"]
_REMOTE_ADDR = COLUMN_WIDTHS["remote_addr"]
_XFORWARDEDFOR = COLUMN_WIDTHS["xforwardedfor"]
_PATH = COLUMN_WIDTHS["path"]
_USERNAME = COLUMN_WIDTHS["username"]
_METHOD = COLUMN_WIDTHS["method"]
_ROUTE = COLUMN_WIDTHS["route"]
_ENDPOINT = COLUMN_WIDTHS["endpoint"]
_USER_AGENT = COLUMN_WIDTHS["user_agent_raw"]
_SERVER_NAME = COLUMN_WIDTHS["server_name"]
_PROTOCOL = COLUMN_WIDTHS["protocol"]
_EXCEPTION = COLUMN_WIDTHS["exception"]
_TRACE_ID = COLUMN_WIDTHS["trace_id"]
_SPAN_ID = COLUMN_WIDTHS["span_id"]
_URL = COLUMN_WIDTHS["url"]
_UA_VERSION = COLUMN_WIDTHS["ua_version"]
_VIEW_ARGS = COLUMN_WIDTHS["view_args"]
_IP_INFO = COLUMN_WIDTHS["ip_info"]
_TRACK_VAR = COLUMN_WIDTHS["track_var"]
_INT = COLUMN_LIMITS["status"]
_BIG = COLUMN_LIMITS["content_length"]
_TEXT_WIDTHS = tuple(COLUMN_WIDTHS[c] for c in CURRENT_ROW_COLUMNS[:20])  # the text columns' widths, in order


def current_row(
    record: UsageRecord, timestamp: Callable[[float], Any], authorization: Callable[[Any], Any] | None
) -> tuple[Any, ...]:
    """``record`` as the parameters of one row of a current table, in ``CURRENT_ROW_COLUMNS`` order.

    :param timestamp: makes the ``datetime`` parameter from the record's float seconds.
    :param authorization: the driver's conversion of the boolean, or None to send it as it is.
    """
    (
        seconds,
        speed,
        method,
        scheme,
        host,
        script_root,
        path,
        query_string,
        route,
        endpoint,
        blueprint,
        view_args,
        status,
        content_length,
        response_size,
        remote_addr,
        xforwardedfor,
        user_agent,
        accept_language,
        has_authorization,
        username,
        server_name,
        protocol,
        track_var,
        exception,
        trace_id,
        span_id,
        ip_info,
        _headers,  # for log records only: no column (columns.UNSTORED_FIELDS)
    ) = record
    try:
        url = full_url(scheme, host, script_root, path, query_string)
    except UnicodeEncodeError:  # a lone surrogate: the nearest URL that can be stored
        url = values_url(scheme, host, script_root, path, query_string)
    ua = parse_user_agent(user_agent)  # cached: one parse per distinct header
    texts = (
        blueprint,
        remote_addr,
        xforwardedfor,
        path,
        username,
        method,
        route,
        endpoint,
        user_agent,
        server_name,
        protocol,
        exception,
        trace_id,
        span_id,
        url,
        ua.browser,
        ua.platform,
        ua.version,
        cached_language(accept_language)
        if accept_language is None or len(accept_language) <= MAX_CACHED_LANGUAGE
        else first_language(accept_language),
        ua.synthetic,
    )
    try:
        joined = "".join(filter(None, texts))
        plain_text = joined.isascii() and "\x00" not in joined
    except TypeError:  # a value that is not text (a username given as a number)
        plain_text = False
    if plain_text:
        # Each value is only compared with its column's width. The parsed browser and platform,
        # the language tag, the synthetic type, the trace and span ids are never longer than their columns.
        try:
            texts = (
                blueprint if blueprint is None or len(blueprint) <= _BLUEPRINT else blueprint[:_BLUEPRINT],
                remote_addr if remote_addr is None or len(remote_addr) <= _REMOTE_ADDR else remote_addr[:_REMOTE_ADDR],
                xforwardedfor
                if xforwardedfor is None or len(xforwardedfor) <= _XFORWARDEDFOR
                else xforwardedfor[:_XFORWARDEDFOR],
                path if path is None or len(path) <= _PATH else path[:_PATH],
                username if username is None or len(username) <= _USERNAME else username[:_USERNAME],
                method if method is None or len(method) <= _METHOD else method[:_METHOD],
                route if route is None or len(route) <= _ROUTE else route[:_ROUTE],
                endpoint if endpoint is None or len(endpoint) <= _ENDPOINT else endpoint[:_ENDPOINT],
                user_agent if user_agent is None or len(user_agent) <= _USER_AGENT else user_agent[:_USER_AGENT],
                server_name if server_name is None or len(server_name) <= _SERVER_NAME else server_name[:_SERVER_NAME],
                protocol if protocol is None or len(protocol) <= _PROTOCOL else protocol[:_PROTOCOL],
                exception if exception is None or len(exception) <= _EXCEPTION else exception[:_EXCEPTION],
                trace_id if trace_id is None or len(trace_id) <= _TRACE_ID else trace_id[:_TRACE_ID],
                span_id if span_id is None or len(span_id) <= _SPAN_ID else span_id[:_SPAN_ID],
                url if url is None or len(url) <= _URL else url[:_URL],
                texts[15],
                texts[16],
                texts[17] if texts[17] is None or len(texts[17]) <= _UA_VERSION else texts[17][:_UA_VERSION],
                texts[18],
                texts[19],
            )
        except TypeError:  # a falsy value that is not text (a username of 0): the join let it through
            plain_text = False
    if not plain_text:
        texts = tuple(map(clean_text, texts, _TEXT_WIDTHS))
    # An integer out of its column's range (a record made by hand, a hostile Content-Length) is NULL.
    if status is not None and not -_INT - 1 <= status <= _INT:
        status = None
    if content_length is not None and not -_BIG - 1 <= content_length <= _BIG:
        content_length = None
    if response_size is not None and not -_BIG - 1 <= response_size <= _BIG:
        response_size = None
    return (
        *texts,
        # None and {} (most requests' ip_info, track_var, view_args) without a call.
        None if view_args is None else "{}" if view_args == {} else json_text(view_args, _VIEW_ARGS),
        None if ip_info is None else "{}" if ip_info == {} else json_text(ip_info, _IP_INFO),
        None if track_var is None else "{}" if track_var == {} else json_text(track_var, _TRACK_VAR),
        status,
        has_authorization if authorization is None else authorization(has_authorization),
        speed,
        timestamp(seconds),
        content_length,
        response_size,
    )
