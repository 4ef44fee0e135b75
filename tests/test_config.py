"""Settings are validated once at init_app; a bad value names its key."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import warnings

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, TrackUsage
from flask_usage_otel.config import DEFAULT_BUCKETS, LegacySettingWarning, load_settings


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.include_or_exclude_views == "exclude"
    assert settings.metrics_path == "/metrics"
    assert settings.metrics_prefix == "flask_usage_"
    assert settings.buckets == DEFAULT_BUCKETS
    assert settings.exclude_paths_re is None
    assert settings.queue_bytes == 64 * 1024 * 1024
    assert settings.batch_linger == 0.05
    assert settings.otel_logs_headers is False


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS", "both"),
        ("TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS", None),
        ("TRACK_USAGE_EXCLUDE_PATHS", "/healthz"),
        ("TRACK_USAGE_EXCLUDE_PATHS", ["(unclosed"]),
        ("TRACK_USAGE_EXCLUDE_PATHS", [3]),
        ("TRACK_USAGE_METRICS_PREFIX", "my-app"),
        ("TRACK_USAGE_BUCKETS", [0.5, 0.1]),
        ("TRACK_USAGE_BUCKETS", []),
        ("TRACK_USAGE_BUCKETS", "0.1,0.2"),
        ("TRACK_USAGE_BUCKETS", [0, 1]),
        ("TRACK_USAGE_BUCKETS", [float("nan")]),
        ("TRACK_USAGE_METRICS_PATH", "metrics"),
        ("TRACK_USAGE_METRICS_PATH", "/metrics/<x>"),
        ("TRACK_USAGE_METRICS_AUTH", 42),
        ("TRACK_USAGE_METRICS_AUTH", ("user",)),
        ("TRACK_USAGE_METRICS_AUTH", ("us:er", "pw")),
        ("TRACK_USAGE_PROMETHEUS", "maybe"),
        ("TRACK_USAGE_EXCEPTION_LABEL_LIMIT", 0),
        ("TRACK_USAGE_QUEUE_SIZE", -1),
        ("TRACK_USAGE_BATCH_SIZE", 1.5),
        ("TRACK_USAGE_FLUSH_INTERVAL", 0),
        ("TRACK_USAGE_QUEUE_BYTES", 1000),
        ("TRACK_USAGE_QUEUE_BYTES", "64MB"),
        ("TRACK_USAGE_BATCH_LINGER", -0.1),
        ("TRACK_USAGE_BATCH_LINGER", float("nan")),
        ("TRACK_USAGE_SYNC_WRITES", "perhaps"),
        ("TRACK_USAGE_CAPTURE_USER", "email"),
        ("TRACK_USAGE_ANONYMIZE_IP", "scramble"),
        ("TRACK_USAGE_OTEL_EXPORTER", "zipkin"),
        ("TRACK_USAGE_OTEL_LOGS_HEADERS", "maybe"),
        ("TRACK_USAGE_OTEL_LOGS_HEADERS", None),
    ],
)
def test_bad_value_fails_at_init_app_naming_the_key(key: str, value: object) -> None:
    app = Flask("bad")
    app.config[key] = value
    with pytest.raises(ConfigError) as info:
        TrackUsage(app, registry=CollectorRegistry())
    assert str(info.value).startswith(key)
    assert info.value.key == key
    assert "track_usage" not in app.extensions


def test_mode_error_lists_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"'include', 'exclude'.*'both'"):
        load_settings({"TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS": "both"})


def test_batch_larger_than_queue_is_refused() -> None:
    with pytest.raises(ConfigError, match="TRACK_USAGE_BATCH_SIZE"):
        load_settings({"TRACK_USAGE_QUEUE_SIZE": 10, "TRACK_USAGE_BATCH_SIZE": 20})


def test_hash_anonymisation_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="TRACK_USAGE_ANONYMIZE_IP_KEY"):
        load_settings({"TRACK_USAGE_ANONYMIZE_IP": "hash"})
    assert (
        load_settings({"TRACK_USAGE_ANONYMIZE_IP": "hash", "TRACK_USAGE_ANONYMIZE_IP_KEY": "s"}).anonymize_ip == "hash"
    )


def test_good_values_are_normalised() -> None:
    settings = load_settings(
        {
            "TRACK_USAGE_INCLUDE_OR_EXCLUDE_VIEWS": "INCLUDE",
            "TRACK_USAGE_BUCKETS": [0.1, 1, float("inf")],
            "TRACK_USAGE_METRICS_PATH": None,
            "TRACK_USAGE_METRICS_AUTH": ["scraper", "secret"],
            "TRACK_USAGE_SYNC_WRITES": "true",
            "TRACK_USAGE_CAPTURE_USER": "off",
            "TRACK_USAGE_EXCLUDE_PATHS": [r"/healthz", r"/static/.*"],
        }
    )
    assert settings.include_or_exclude_views == "include"
    assert settings.buckets == (0.1, 1.0)
    assert settings.metrics_path is None
    assert settings.metrics_auth == ("scraper", "secret")
    assert settings.sync_writes is True
    assert settings.capture_user is None
    assert settings.exclude_paths_re is not None
    assert settings.exclude_paths_re.fullmatch("/static/app.css")
    assert not settings.exclude_paths_re.fullmatch("/healthz/deep")


def test_unknown_key_warns_with_the_closest_name() -> None:
    with pytest.warns(UserWarning, match="TRACK_USAGE_EXCLUDE_PATH.*did you mean TRACK_USAGE_EXCLUDE_PATHS"):
        load_settings({"TRACK_USAGE_EXCLUDE_PATH": ["/x"]})


@pytest.mark.parametrize("value", [None, 0, 1, "", "yes", False, True])
def test_use_freegeoip_takes_any_value_by_its_truth_and_warns(value: object) -> None:
    # Flask-Track-Usage read the key by its truth: every such value must load, and say it is obsolete.
    with pytest.warns(LegacySettingWarning, match="TRACK_USAGE_USE_FREEGEOIP") as caught:
        settings = load_settings({"TRACK_USAGE_USE_FREEGEOIP": value})
    assert settings.geoip_db is None
    assert all(issubclass(w.category, FutureWarning) for w in caught)  # shown to users by default
    expected = "replaced by TRACK_USAGE_GEOIP_DB" if value else "has no effect"
    assert expected in str(caught[0].message)


def test_other_flask_track_usage_keys_warn_as_obsolete() -> None:
    with pytest.warns(LegacySettingWarning, match="TRACK_USAGE_FREEGEOIP_ENDPOINT"):
        load_settings({"TRACK_USAGE_FREEGEOIP_ENDPOINT": "http://x/{ip}"})
    with pytest.warns(LegacySettingWarning, match="TRACK_USAGE_COOKIE"):
        load_settings({"TRACK_USAGE_COOKIE": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_settings({"TRACK_USAGE_COOKIE": False})  # off, as Flask-Track-Usage had it: nothing to say


LEGACY_APP = """
from flask import Flask
from prometheus_client import CollectorRegistry
from flask_usage_otel import TrackUsage
app = Flask("legacy")
app.config["TRACK_USAGE_USE_FREEGEOIP"] = True
TrackUsage(app, registry=CollectorRegistry())
print("started")
"""


@pytest.mark.parametrize(
    ("options", "environment", "outcome"),
    [
        ([], None, "shown"),
        (["-W", "error"], None, "raised"),
        (["-W", "ignore"], None, "silent"),
        (["-W", "error::FutureWarning"], None, "raised"),
        ([], "error", "raised"),
        ([], "ignore", "silent"),
        ([], "ignore::FutureWarning", "silent"),
    ],
)
def test_legacy_warning_obeys_the_interpreters_warning_options(
    options: list[str], environment: str | None, outcome: str
) -> None:
    # Importing the package must not change the global filters: -W and PYTHONWARNINGS decide.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    if environment is not None:
        env["PYTHONWARNINGS"] = environment
    result = subprocess.run(
        [sys.executable, *options, "-c", LEGACY_APP], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if outcome == "raised":
        assert result.returncode != 0
        assert "LegacySettingWarning: TRACK_USAGE_USE_FREEGEOIP" in result.stderr
        assert "started" not in result.stdout
        return
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout
    assert ("TRACK_USAGE_USE_FREEGEOIP" in result.stderr) is (outcome == "shown"), result.stderr


def test_importing_the_package_leaves_the_warning_filters_alone() -> None:
    code = "import warnings; before = list(warnings.filters); import flask_usage_otel.config, flask_usage_otel; "
    code += "assert warnings.filters == before, [f for f in warnings.filters if f not in before]"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_legacy_warning_points_at_the_callers_line() -> None:
    app = Flask(__name__)
    app.config["TRACK_USAGE_USE_FREEGEOIP"] = 1
    with pytest.warns(LegacySettingWarning) as caught:
        TrackUsage(app, registry=CollectorRegistry())  # this line
    line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
    assert caught[0].filename == __file__
    assert caught[0].lineno == line


def test_a_second_trackusage_on_one_app_is_refused() -> None:
    app = Flask("twice")
    TrackUsage(app, registry=CollectorRegistry())
    with pytest.raises(RuntimeError, match="already registered"):
        TrackUsage(registry=CollectorRegistry()).init_app(app)


def test_one_registry_two_bucket_layouts_is_refused() -> None:
    registry = CollectorRegistry()
    TrackUsage(Flask("a"), registry=registry)
    other = Flask("b")
    other.config["TRACK_USAGE_BUCKETS"] = [1, 2]
    with pytest.raises(ConfigError, match="TRACK_USAGE_BUCKETS"):
        TrackUsage(other, registry=registry)
