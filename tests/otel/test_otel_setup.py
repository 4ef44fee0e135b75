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
from flask_usage_otel.otel import OpenTelemetryNotConfiguredWarning, OtelSink, create_otel_sink

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


def test_traces_exporter_variable_alone_says_what_is_missing_and_installs_nothing():
    found = run(
        """
        import warnings
        from opentelemetry import trace
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = sink_names()
        report({
            "sinks": names,
            "global": type(trace.get_tracer_provider()).__name__,
            "warnings": [(w.category.__name__, str(w.message)) for w in caught],
        })
        """,
        OTEL_TRACES_EXPORTER="console",
    )
    assert found["sinks"] == ["otel", "prometheus"]
    assert found["global"] == "ProxyTracerProvider"  # never installed by the library
    ((category, message),) = found["warnings"]
    assert category == "OpenTelemetryNotConfiguredWarning"
    assert "OTEL_TRACES_EXPORTER is set" in message
    assert "opentelemetry-instrument" in message
    assert "configure_opentelemetry()" in message


def test_otlp_endpoint_alone_says_what_is_missing():
    found = run(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = sink_names()
        report({"sinks": names, "warnings": [str(w.message) for w in caught]})
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
    )
    assert found["sinks"] == ["otel", "prometheus"]
    (message,) = found["warnings"]
    assert message.startswith("OTEL_EXPORTER_OTLP_ENDPOINT is set in the environment, but no OpenTelemetry tracer")


def test_an_app_configured_provider_is_left_alone_and_nothing_is_said():
    found = run(
        """
        import warnings
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = sink_names()
        report({"sinks": names, "same": trace.get_tracer_provider() is mine, "warnings": len(caught)})
        """,
        OTEL_TRACES_EXPORTER="otlp",
    )
    assert found == {"sinks": ["otel", "prometheus"], "same": True, "warnings": 0}


def test_a_provider_the_app_sets_after_init_app_is_used():
    found = run(
        """
        import warnings
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from flask_usage_otel import TrackUsage

        app = Flask("late")
        app.config["TRACK_USAGE_OTEL"] = True
        app.add_url_rule("/", "index", lambda: "ok")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            TrackUsage(app, registry=CollectorRegistry())
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # after init_app: import order must not matter
        app.test_client().get("/")
        report({"spans": [s.name for s in exporter.get_finished_spans()], "warned": len(caught)})
        """
    )
    assert found == {"spans": ["GET /"], "warned": 1}


def test_the_removed_exporter_setting_says_what_to_do_instead():
    app = Flask(__name__)
    app.config["TRACK_USAGE_OTEL_EXPORTER"] = "console"
    with pytest.raises(ConfigError, match="TRACK_USAGE_OTEL_EXPORTER") as raised:
        TrackUsage(app, registry=CollectorRegistry())
    assert "opentelemetry-instrument" in str(raised.value)
    assert "configure_opentelemetry" in str(raised.value)


def test_init_app_never_sets_a_global_provider():
    found = run(
        """
        from opentelemetry import metrics, trace
        names = [
            sink_names({"TRACK_USAGE_OTEL": True, "TRACK_USAGE_OTEL_METRICS": True}),
            sink_names({"TRACK_USAGE_PROMETHEUS": False}),
        ]
        report({
            "sinks": names,
            "tracer": type(trace.get_tracer_provider()).__name__,
            "meter": type(metrics.get_meter_provider()).__name__,
        })
        """,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
    )
    assert found == {
        "sinks": [["otel", "prometheus"], ["otel"]],
        "tracer": "ProxyTracerProvider",
        "meter": "_ProxyMeterProvider",
    }


def test_metrics_asked_for_without_a_meter_provider_says_so():
    found = run(
        """
        import warnings
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        trace.set_tracer_provider(TracerProvider())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sink_names({"TRACK_USAGE_OTEL_METRICS": True})
        report([str(w.message) for w in caught])
        """
    )
    (message,) = found
    assert message.startswith("TRACK_USAGE_OTEL_METRICS is True, but no OpenTelemetry meter provider")


def test_configure_opentelemetry_sets_up_the_sdk_once():
    found = run(
        """
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from flask_usage_otel import configure_opentelemetry

        provider = configure_opentelemetry("shop", exporter="console", metrics=True)
        again = configure_opentelemetry("other", exporter="console")
        try:
            configure_opentelemetry(exporter="zipkin")
            error = None
        except ValueError as exc:
            error = str(exc)
        report({
            "global": trace.get_tracer_provider() is provider,
            "sdk": isinstance(provider, TracerProvider),
            "kept": again is provider,
            "service": provider.resource.attributes["service.name"],
            "meter": isinstance(metrics.get_meter_provider(), MeterProvider),
            "error": error,
            "sinks": sink_names(),
        })
        """
    )
    assert found == {
        "global": True,
        "sdk": True,
        "kept": True,
        "service": "shop",
        "meter": True,
        "error": "exporter must be 'otlp' or 'console', got 'zipkin'",
        "sinks": ["otel", "prometheus"],
    }


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
    with pytest.warns(OpenTelemetryNotConfiguredWarning, match="TRACK_USAGE_OTEL is True"):
        assert isinstance(create_otel_sink(app, Settings(otel=True)), OtelSink)  # the global proxy provider


def test_otel_true_with_the_no_op_global_provider_serves_requests():
    app = Flask(__name__)
    app.config["TRACK_USAGE_OTEL"] = True
    app.add_url_rule("/", "index", lambda: "ok")
    with pytest.warns(OpenTelemetryNotConfiguredWarning):
        TrackUsage(app, registry=CollectorRegistry())
    assert app.test_client().get("/").status_code == 200


def test_otel_sink_is_public():
    import flask_usage_otel

    assert flask_usage_otel.OtelSink is OtelSink
    assert "OtelSink" in flask_usage_otel.__all__
