# Soundkit's workflow. `make run` and `make test` work on a fresh machine: they create
# the virtualenv, install the project and the system tools it needs (ffmpeg; Chromium
# for the browser tests), then run.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test setup system-deps test-deps lint typecheck check services-check \
        bench-pipeline bench-fingerprint flower worker api beat clean

run: setup  ## set up and start api + worker + beat on the embedded defaults
	$(BIN)/soundkit run

test: setup test-deps services-check  ## set up and run the whole suite
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# ffmpeg/ffprobe are Debian packages; install them when missing (root, or sudo).
system-deps:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  echo "installing ffmpeg"; \
	  $(SUDO) $(APT_GET) update -qq && $(SUDO) $(APT_GET) install -y -qq ffmpeg >/dev/null; }

# Debian's Chromium for the browser tests; fpcalc (chromaprint) for the fingerprint benchmark.
test-deps:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium"; \
	  $(SUDO) $(APT_GET) update -qq && $(SUDO) $(APT_GET) install -y -qq chromium >/dev/null; }

bench-deps:
	@command -v fpcalc >/dev/null || { \
	  $(SUDO) $(APT_GET) update -qq && $(SUDO) $(APT_GET) install -y -qq libchromaprint-tools >/dev/null; }

services-check:  ## PostgreSQL and Redis must be running for the integration suite
	@$(BIN)/python -c "import socket,sys; \
	[socket.create_connection(('127.0.0.1', p), 2).close() for p in (5432, 6379)]" \
	  || { echo "PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) must be running"; exit 1; }

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy

check: lint typecheck

bench-pipeline: setup
	$(BIN)/python -m bench.pipeline

bench-fingerprint: setup bench-deps
	$(BIN)/python -m bench.fingerprint

flower: setup  ## Celery's own view of the broker, on http://127.0.0.1:5555
	$(BIN)/celery -A worker.app flower --address=127.0.0.1 --port=5555

api: setup
	$(BIN)/gunicorn --bind $${SOUNDKIT_BIND:-127.0.0.1:8000} --workers 2 --threads 4 api.wsgi:app

worker: setup
	$(BIN)/celery -A worker.app worker -Q ingest,webhooks,maintenance --loglevel INFO

beat: setup
	$(BIN)/celery -A worker.app beat --loglevel INFO

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
