"""Example apps for flask-usage-otel."""
