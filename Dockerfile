# The demo app under gunicorn, as docker-compose.yml runs it. Also a starting point for your own
# image: install your app the same way and use the packaged config (python:flask_usage_otel.gunicorn_config).
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first: this layer is rebuilt only when the package changes.
COPY pyproject.toml README.md ./
COPY flask_usage_otel ./flask_usage_otel
RUN pip install ".[postgres,otel]" "gunicorn>=22"

COPY examples ./examples
COPY deploy/loadgen.py ./deploy/loadgen.py

RUN useradd --system --uid 10001 --no-create-home app
USER app

EXPOSE 8000
CMD ["gunicorn", "--config", "python:flask_usage_otel.gunicorn_config", "examples.demo_app:create_app()"]
