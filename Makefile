# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := sql,postgres,mysql,otel,geoip,dev
STAMP := $(VENV)/.installed

.PHONY: demo test unit integration lint format services bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

services:
	bash .ci/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) services lint
	$(BIN)/pytest -m "not slow" -q

unit: $(STAMP)
	$(BIN)/pytest -m "not integration and not slow" -q

integration: $(STAMP) services
	$(BIN)/pytest -m "integration and not slow" -q

# Benchmark-only peers go into the venv here, never into the package's dependencies.
# `make bench BENCH_ARGS=--quick` for a short run.
bench: $(STAMP) services
	$(BIN)/pip install --quiet -r benchmarks/requirements.txt
	bash benchmarks/ensure_tools.sh
	@command -v wrk >/dev/null || echo "wrk not found: HTTP load comes from the Python generator (apt-get install wrk)"
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

soak: $(STAMP) services
	$(BIN)/pytest -m slow -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
