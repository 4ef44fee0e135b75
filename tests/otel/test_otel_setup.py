"""When the OTel sink is on, and that an app without OpenTelemetry never loads it.

The rules depend on process-global state (the global tracer provider, the installed
packages), so most cases run in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from flask import Flask
from prometheus_client import CollectorRegistry

from flask_usage_otel import ConfigError, Settings, TrackUsage
from flask_usage_otel.otel import OtelSink, create_otel_sink

PRELUDE = textwrap.dedent(
    """
    import json, sys
    from flask import Flask
    from prometheus_client import CollectorRegistry

    def sink_names(config=None, **kwargs):
        from flask_usage_otel import TrackUsage

        app = Flask("setup_check")
        app.config.update(config or {})
        app.add_url_rule("/", "index", lambda: "ok")
        TrackUsage(app, registry=CollectorRegistry(), **kwargs)
        assert app.test_client().get("/").status_code == 200
        return [s.name for s in app.extensions["track_usage"]._trackers[app].sinks]

    def report(found):
        print("RESULT", json.dumps(found), flush=True)
    """
)


def run(code: str, **env: str) -> dict:
    """Run ``code`` after PRELUDE in a fresh interpreter and return what it ``report``-ed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACK_USAGE_"))}
    clean.update(env)
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def test_default_is_off_without_a_configured_provider():
    found = run('report({"sinks": sink_names()})')
    assert found["sinks"] == ["prometheus"]


def test_default_is_on_with_a_global_sdk_provider():
    found = run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        report({"sinks": sink_names()})
        """
    )
    assert found["sinks"] == ["otel", "prometheus"]


def test_sdk_disabled_turns_the_default_off():
    found = run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        report({"sinks": sink_names()})
        """,
        OTEL_SDK_DISABLED="true",
    )
    assert found["sinks"] == ["prometheus"]


def test_traces_exporter_variable_sets_up_a_provider():
    found = run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        names = sink_names()
        report({"sinks": names, "sdk": isinstance(trace.get_tracer_provider(), TracerProvider)})
        """,
        OTEL_TRACES_EXPORTER="console",
    )
    assert found == {"sinks": ["otel", "prometheus"], "sdk": True}


def test_an_app_configured_provider_is_left_alone():
    found = run(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        names = sink_names({"TRACK_USAGE_OTEL_EXPORTER": "console"})
        report({"sinks": names, "same": trace.get_tracer_provider() is mine})
        """
    )
    assert found == {"sinks": ["otel", "prometheus"], "same": True}


def test_without_opentelemetry_installed_nothing_imports_it():
    found = run(
        """
        for name in ("opentelemetry", "opentelemetry.sdk", "opentelemetry.trace"):
            sys.modules[name] = None  # as if the otel extra were not installed
        names = sink_names({"TRACK_USAGE_OTEL_METRICS": True})
        from flask_usage_otel import ConfigError
        try:
            sink_names({"TRACK_USAGE_OTEL": True})
            error = None
        except ConfigError as exc:
            error = exc.key
        loaded = sorted(m for m, mod in sys.modules.items() if m.startswith("opentelemetry") and mod is not None)
        report({"sinks": names, "error": error, "loaded": loaded})
        """
    )
    assert found == {"sinks": ["prometheus"], "error": "TRACK_USAGE_OTEL", "loaded": []}


def test_otel_off_never_imports_opentelemetry():
    found = run(
        """
        names = sink_names({"TRACK_USAGE_OTEL": False})
        report({"sinks": names, "loaded": any(m.startswith("opentelemetry") for m in sys.modules)})
        """
    )
    assert found == {"sinks": ["prometheus"], "loaded": False}


def test_factory_follows_the_setting(tracer_provider):
    app = Flask(__name__)
    assert create_otel_sink(app, Settings(otel=False), tracer_provider) is None
    assert isinstance(create_otel_sink(app, Settings(), tracer_provider), OtelSink)
    assert isinstance(create_otel_sink(app, Settings(otel=True)), OtelSink)  # the global (no-op) provider


def test_otel_true_with_the_no_op_global_provider_serves_requests():
    app = Flask(__name__)
    app.config["TRACK_USAGE_OTEL"] = True
    app.add_url_rule("/", "index", lambda: "ok")
    TrackUsage(app, registry=CollectorRegistry())
    assert app.test_client().get("/").status_code == 200


def test_unknown_exporter_is_a_config_error():
    app = Flask(__name__)
    app.config["TRACK_USAGE_OTEL_EXPORTER"] = "jaeger"
    with pytest.raises(ConfigError, match="TRACK_USAGE_OTEL_EXPORTER"):
        TrackUsage(app, registry=CollectorRegistry())


def test_otel_sink_is_public():
    import flask_usage_otel

    assert flask_usage_otel.OtelSink is OtelSink
    assert "OtelSink" in flask_usage_otel.__all__
