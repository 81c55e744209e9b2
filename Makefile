# Set-up and run targets; `make run` and `make test` need only python3 (3.11+) on the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app wsgi

.PHONY: run test install install-dev clean production

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

# Migrate the SQLite database under instance/, load demo data and the IATI sample files,
# compute match suggestions, and serve on http://127.0.0.1:5000.
run: install
	$(FLASK) db upgrade
	$(FLASK) demo load
	$(FLASK) iati import data/iati-activities/*.xml
	$(FLASK) match learn
	$(FLASK) match run
	$(FLASK) run --host 127.0.0.1 --port 5000

# Run gunicorn and RQ workers on the local PostgreSQL and Redis, as docs/deployment.md describes.
production: install
	scripts/production

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) instance/financing.sqlite
