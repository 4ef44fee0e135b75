"""Every ``TRACK_USAGE_*`` setting, read once at ``init_app`` into a frozen object.

Reading the Flask config on each request would cost a dict lookup per key and
let a typo hide until traffic arrives; instead every key is validated here and a
wrong value fails at start-up with an error that names the key.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .otel_env import NO_OTEL_VARIABLES, OtelEnvironment, read_otel_environment
from .privacy import DEFAULT_REDACTED_QUERY_PARAMS, DEFAULT_REDACTED_VIEW_ARGS

PREFIX = "TRACK_USAGE_"

# Latency buckets, seconds: 100 µs to 30 s in 1-2.5-5 steps. A Flask route served from
# memory takes 0.1-1 ms, so buckets that start at 5 ms (the OTel default) put every fast
# route in the first bucket and report its p50 as 2.5 ms. See docs/request-lifecycle.md.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Response sizes, bytes: one bucket per decade from 1 kB (a small JSON answer) to 10 MB. Coarser
# than the latency buckets, and without the status label: each label set of the size histogram
# costs every scrape one line per bucket (see docs/prometheus.md, "What a scrape costs").
DEFAULT_SIZE_BUCKETS: tuple[float, ...] = (1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)

_METRIC_PREFIX_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# Label names the metrics use themselves, or that histograms, multiprocess mode or Prometheus add.
_OWN_LABELS = ("method", "route", "blueprint", "status", "endpoint", "exception", "component", "version", "reason")
RESERVED_LABELS = frozenset((*_OWN_LABELS, "le", "quantile", "pid", "job", "instance"))

SYNTHETIC_TYPES = ("bot", "test")  # the values of OpenTelemetry's user_agent.synthetic.type

MetricsAuth = Callable[[Any], bool] | str | tuple[str, str] | None
CaptureUser = Callable[[], str | None] | str | None


_PACKAGE = __name__.partition(".")[0]


class LegacySettingWarning(FutureWarning):
    """A Flask-Track-Usage setting that is accepted but obsolete.

    A ``FutureWarning``, Python's category for deprecations aimed at the people who run
    an application (a ``DeprecationWarning`` is hidden unless raised from ``__main__``):
    shown once per place by default, and ``-W``, ``PYTHONWARNINGS`` and ``warnings``
    filters decide as for any warning. This module never touches the global filters.
    """


class ConfigError(ValueError):
    """A ``TRACK_USAGE_*`` setting has a value that cannot be used."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated settings of one app. See README.md for each key."""

    include_or_exclude_views: str = "exclude"
    exclude_paths: tuple[str, ...] = ()
    exclude_paths_re: re.Pattern[str] | None = None
    metrics_prefix: str = "flask_usage_"
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    size_buckets: tuple[float, ...] = DEFAULT_SIZE_BUCKETS
    prometheus: bool = True
    metrics_path: str | None = "/metrics"
    metrics_auth: MetricsAuth = None
    metrics_const_labels: tuple[tuple[str, str], ...] = ()
    exclude_synthetic: frozenset[str] = frozenset()
    exception_label_limit: int = 50
    capture_user: CaptureUser = "id"
    anonymize_ip: str | None = None
    anonymize_ip_key: bytes | None = None
    geoip_db: str | None = None
    redact_query_params: tuple[str, ...] = DEFAULT_REDACTED_QUERY_PARAMS
    redact_view_args: tuple[str, ...] = DEFAULT_REDACTED_VIEW_ARGS
    # storage (SQL persistence)
    queue_size: int = 10_000
    queue_bytes: int = 64 * 1024 * 1024
    batch_size: int = 500
    flush_interval: float = 1.0
    batch_linger: float = 0.05
    sync_writes: bool = False
    # OpenTelemetry
    otel: bool | None = None
    otel_metrics: bool | None = None
    otel_capture_user: bool = False
    otel_logs: bool = False
    otel_logs_headers: bool = False  # log records carry the headers OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_* name
    otel_env: OtelEnvironment = NO_OTEL_VARIABLES  # OpenTelemetry's own OTEL_* variables (otel_env.py)


# key -> (Settings field, parser). Parsers raise ConfigError naming the key.
Parser = Callable[[str, Any], Any]


class ViewsModeError(ConfigError, NotImplementedError):
    """``TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS`` is neither ``include`` nor ``exclude``; also the
    ``NotImplementedError`` Flask-Track-Usage raised for it, so code that caught that keeps working."""


def _choice(*allowed: str, error: type[ConfigError] = ConfigError) -> Parser:
    def parse(key: str, value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in allowed:
            raise error(key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value.lower()

    return parse


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        return value.lower() in {"1", "true", "yes", "on"}
    raise ConfigError(key, f"must be a boolean, got {value!r}")


def _optional_bool(key: str, value: Any) -> bool | None:
    return None if value is None else _bool(key, value)


def _int_range(low: int, high: int) -> Parser:
    def parse(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(key, f"must be an integer from {low} to {high}, got {value!r}")
        return value

    return parse


def _positive_seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}")
    if not (0 < value <= 3600) or math.isnan(value):
        raise ConfigError(key, f"must be more than 0 and at most 3600 seconds, got {value!r}")
    return float(value)


def _seconds_or_zero(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}")
    if not 0 <= value <= 60:
        raise ConfigError(key, f"must be from 0 to 60 seconds, got {value!r}")
    return float(value)


def _buckets(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ConfigError(key, f"must be a non-empty list of increasing numbers, got {value!r}")
    try:
        bounds = tuple(float(v) for v in value if not isinstance(v, bool))
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a list of numbers, got {value!r}") from None
    if len(bounds) != len(value) or any(math.isnan(b) for b in bounds):
        raise ConfigError(key, f"must be a list of numbers, got {value!r}")
    if math.isinf(bounds[-1]):
        bounds = bounds[:-1]  # +Inf is always added by prometheus_client
    if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)) or bounds[0] <= 0:
        raise ConfigError(key, f"must be positive and strictly increasing, got {list(value)!r}")
    return bounds


def _metrics_prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _METRIC_PREFIX_RE.fullmatch(value):
        raise ConfigError(key, f"must be a valid Prometheus metric name prefix such as 'flask_usage_', got {value!r}")
    return value


def _metrics_path(key: str, value: Any) -> str | None:
    if value is None or value is False:
        return None
    if not isinstance(value, str) or not value.startswith("/") or any(c in value for c in "<> ?#"):
        raise ConfigError(key, f"must be a URL path starting with '/' (or None to disable), got {value!r}")
    return value


def _metrics_auth(key: str, value: Any) -> MetricsAuth:
    if value is None or callable(value):
        return value
    if isinstance(value, str) and value:
        return value
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, str) and v for v in value)
        and ":" not in value[0]
    ):
        return (value[0], value[1])
    raise ConfigError(
        key,
        "must be a callable taking the request, a bearer token string, "
        f"or a (username, password) pair, got {type(value).__name__}",
    )


def _const_labels(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            key, f"must be a mapping of label names to values, such as {{'service': 'shop'}}, got {value!r}"
        )
    for name, label_value in value.items():
        if not isinstance(name, str) or not _LABEL_NAME_RE.fullmatch(name) or name.startswith("__"):
            raise ConfigError(key, f"{name!r} is not a valid Prometheus label name")
        if name in RESERVED_LABELS:
            raise ConfigError(key, f"{name!r} is a label the metrics (or Prometheus) already use; choose another name")
        if not isinstance(label_value, str):
            raise ConfigError(key, f"the value of {name!r} must be a string, got {label_value!r}")
    return tuple(sorted(value.items()))


def _synthetic_types(key: str, value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(
            key, f"must be a list of {' and '.join(map(repr, SYNTHETIC_TYPES))} (empty for none), got {value!r}"
        )
    for kind in value:
        if kind not in SYNTHETIC_TYPES:
            raise ConfigError(key, f"must contain only {' and '.join(map(repr, SYNTHETIC_TYPES))}, got {kind!r}")
    return frozenset(value)


def _exclude_paths(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(key, f"must be a list of regular expressions, got {value!r}")
    patterns = tuple(value)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(key, f"must contain strings, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(key, f"{pattern!r} is not a valid regular expression: {exc}") from None
    return patterns


def _capture_user(key: str, value: Any) -> CaptureUser:
    if callable(value):
        return value
    if value is None or value is False or (isinstance(value, str) and value.lower() == "off"):
        return None
    if value is True or (isinstance(value, str) and value.lower() == "id"):
        return "id"
    if isinstance(value, str) and value.lower() == "basic_auth":
        return "basic_auth"
    raise ConfigError(key, f"must be 'off', 'id', 'basic_auth' or a callable returning the user id, got {value!r}")


def _anonymize_ip(key: str, value: Any) -> str | None:
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.lower() in {"truncate", "hash"}:
        return value.lower()
    if value is True:
        return "truncate"
    raise ConfigError(key, f"must be None, 'truncate' or 'hash', got {value!r}")


def _optional_str(key: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return value
    raise ConfigError(key, f"must be a non-empty string or None, got {value!r}")


def _secret(key: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        return value.encode()
    if isinstance(value, bytes) and value:
        return value
    raise ConfigError(key, "must be a non-empty string or bytes")


def _query_params(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(key, f"must be a list of query parameter names (empty to redact none), got {value!r}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name or "&" in name or "=" in name:
            raise ConfigError(key, f"must contain query parameter names, got {name!r}")
    return names


def _view_args(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | set | frozenset):
        raise ConfigError(key, f"must be a list of URL variable names (empty to redact none), got {value!r}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(key, f"must contain URL variable names (as in /reset/<token>), got {name!r}")
    return names


_KEYS: dict[str, tuple[str, Parser]] = {
    "INCLUDE_OR_EXCLUDE_VIEWS": ("include_or_exclude_views", _choice("include", "exclude", error=ViewsModeError)),
    "EXCLUDE_PATHS": ("exclude_paths", _exclude_paths),
    "METRICS_PREFIX": ("metrics_prefix", _metrics_prefix),
    "BUCKETS": ("buckets", _buckets),
    "SIZE_BUCKETS": ("size_buckets", _buckets),
    "PROMETHEUS": ("prometheus", _bool),
    "METRICS_PATH": ("metrics_path", _metrics_path),
    "METRICS_AUTH": ("metrics_auth", _metrics_auth),
    "METRICS_CONST_LABELS": ("metrics_const_labels", _const_labels),
    "EXCLUDE_SYNTHETIC": ("exclude_synthetic", _synthetic_types),
    "EXCEPTION_LABEL_LIMIT": ("exception_label_limit", _int_range(1, 10_000)),
    "CAPTURE_USER": ("capture_user", _capture_user),
    "ANONYMIZE_IP": ("anonymize_ip", _anonymize_ip),
    "ANONYMIZE_IP_KEY": ("anonymize_ip_key", _secret),
    "GEOIP_DB": ("geoip_db", _optional_str),
    "REDACT_QUERY_PARAMS": ("redact_query_params", _query_params),
    "REDACT_VIEW_ARGS": ("redact_view_args", _view_args),
    "QUEUE_SIZE": ("queue_size", _int_range(1, 10_000_000)),
    "QUEUE_BYTES": ("queue_bytes", _int_range(64 * 1024, 2**40)),
    "BATCH_SIZE": ("batch_size", _int_range(1, 100_000)),
    "FLUSH_INTERVAL": ("flush_interval", _positive_seconds),
    "BATCH_LINGER": ("batch_linger", _seconds_or_zero),
    "SYNC_WRITES": ("sync_writes", _bool),
    "OTEL": ("otel", _optional_bool),
    "OTEL_METRICS": ("otel_metrics", _optional_bool),
    "OTEL_CAPTURE_USER": ("otel_capture_user", _bool),
    "OTEL_LOGS": ("otel_logs", _bool),
    "OTEL_LOGS_HEADERS": ("otel_logs_headers", _bool),
}

# Flask-Track-Usage's keys: accepted so an existing config keeps working.
_LEGACY_KEYS = frozenset({"USE_FREEGEOIP", "FREEGEOIP_ENDPOINT", "COOKIE"})

# Keys that no longer exist: any value but None fails with what to do instead.
_REMOVED_KEYS: dict[str, str] = {
    # A library must not install global OpenTelemetry providers (docs/opentelemetry.md).
    "OTEL_EXPORTER": "flask-usage-otel no longer sets up OpenTelemetry export itself; run the app under "
    "`opentelemetry-instrument`, or call flask_usage_otel.configure_opentelemetry(exporter=...) before "
    "TrackUsage, or pass tracer_provider= (see docs/opentelemetry.md)",
}

KNOWN_KEYS: frozenset[str] = frozenset(PREFIX + k for k in (*_KEYS, *_LEGACY_KEYS, *_REMOVED_KEYS))


def load_settings(config: Mapping[str, Any]) -> Settings:
    """Validate every ``TRACK_USAGE_*`` key of a Flask config (and the ``OTEL_*`` variables) and return the settings.

    :param config: the app's ``app.config`` (any mapping).
    :raises ConfigError: a key has a value of the wrong type or out of range;
        the message starts with the key's name (or the variable's).
    """
    for suffix, message in _REMOVED_KEYS.items():
        if config.get(PREFIX + suffix) is not None:
            raise ConfigError(PREFIX + suffix, message)
    values: dict[str, Any] = {}
    for suffix, (field_name, parse) in _KEYS.items():
        key = PREFIX + suffix
        if key in config:
            values[field_name] = parse(key, config[key])

    if values.get("anonymize_ip") == "hash" and not values.get("anonymize_ip_key"):
        message = "is required when TRACK_USAGE_ANONYMIZE_IP is 'hash' (a secret key for the keyed hash)"
        raise ConfigError(PREFIX + "ANONYMIZE_IP_KEY", message)
    defaults = Settings()
    if values.get("batch_size", defaults.batch_size) > values.get("queue_size", defaults.queue_size):
        raise ConfigError(PREFIX + "BATCH_SIZE", "must not be larger than TRACK_USAGE_QUEUE_SIZE")
    patterns = values.get("exclude_paths")
    if patterns:
        # One alternation compiled once: a single C-level match per request.
        values["exclude_paths_re"] = re.compile("|".join(f"(?:{p})" for p in patterns))

    _warn_about_legacy_and_unknown_keys(config)
    return Settings(**values, otel_env=read_otel_environment(ConfigError))


def _warn_about_legacy_and_unknown_keys(config: Mapping[str, Any]) -> None:
    stacklevel = _user_stacklevel()
    if PREFIX + "USE_FREEGEOIP" in config:
        # Flask-Track-Usage took any value by its truth (None, 0, 1, "" ...): so does this.
        if config[PREFIX + "USE_FREEGEOIP"]:
            message = (
                "TRACK_USAGE_USE_FREEGEOIP is replaced by TRACK_USAGE_GEOIP_DB: a local MaxMind-format "
                "database, so no request ever waits on a third-party lookup; the old key is ignored"
            )
        else:
            message = "TRACK_USAGE_USE_FREEGEOIP is obsolete and has no effect (see TRACK_USAGE_GEOIP_DB); remove it"
        warnings.warn(message, LegacySettingWarning, stacklevel=stacklevel)
    if PREFIX + "FREEGEOIP_ENDPOINT" in config:
        warnings.warn(
            "TRACK_USAGE_FREEGEOIP_ENDPOINT is obsolete and ignored: no third-party lookup is made "
            "(see TRACK_USAGE_GEOIP_DB); remove it",
            LegacySettingWarning,
            stacklevel=stacklevel,
        )
    if config.get(PREFIX + "COOKIE"):
        warnings.warn(
            "TRACK_USAGE_COOKIE was never implemented by Flask-Track-Usage and has no effect",
            LegacySettingWarning,
            stacklevel=stacklevel,
        )
    for key in config:
        if isinstance(key, str) and key.startswith(PREFIX) and key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.warn(f"unknown setting {key}{hint}", UserWarning, stacklevel=stacklevel)


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside this package.

    ``load_settings`` is reached through ``TrackUsage(app)`` or ``init_app(app)`` (or
    directly), so a fixed number would point into this package on one of those paths.
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == _PACKAGE:
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level
