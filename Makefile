# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := sql,postgres,mysql,otel,geoip,dev,docs
STAMP := $(VENV)/.installed

.PHONY: demo test unit floors integration lint format services bench soak docs docs-serve dist clean ftu-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# `make demo DEMO_ARGS=--serve` keeps the app serving after the tour.
demo: $(STAMP)
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

services:
	bash .ci/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The newest releases in .venv, then the unit and database tests on the lowest declared versions (floors).
test: $(STAMP) services lint
	$(BIN)/pytest -m "not slow" -q
	$(PYTHON) tools/floors.py

# The unit and database tests in .venv-floors, every dependency at the floor pyproject.toml declares.
floors:
	$(PYTHON) tools/floors.py

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

# Real Flask-Track-Usage 2.0.0 in its own virtualenv, the reference of tests/ftu (made by the tests too).
ftu-venv:
	$(PYTHON) tests/ftu/ftu_env.py

# -s: the soak tests print their figures (RSS per worker, rows written and dropped).
soak: $(STAMP) services
	$(BIN)/pytest -m slow -q -s

docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) .venv-ftu .venv-floors .pytest_cache .ruff_cache site dist build
