# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test docs lint install storage-up storage-down clean-local

install: $(STAMP)

# boto3 and dvc-s3 resolve together in one pip call (dvc-s3 pins botocore through aiobotocore).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,labels,weights,docs]"
	@touch $(STAMP)

demo: $(STAMP)
	@test -d .git || (git init -q && git add -A >/dev/null)
	$(BIN)/frugalml storage up
	$(BIN)/frugalml data upload builtin:shapes
	$(BIN)/frugalml run

# Two workers, one test file each at a time: much of the suite waits on servers and subprocesses.
test: $(STAMP)
	$(BIN)/ruff check frugalml tasks flows tests benchmarks
	$(BIN)/ruff format --check frugalml tasks flows tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=15

# The documentation site on http://127.0.0.1:8000 (rebuilt on every change; Ctrl-C stops it).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

# Fix what ruff can fix, and format.
lint: $(STAMP)
	$(BIN)/ruff check --fix frugalml tasks flows tests benchmarks
	$(BIN)/ruff format frugalml tasks flows tests benchmarks

storage-up: $(STAMP)
	$(BIN)/frugalml storage up

storage-down: $(STAMP)
	$(BIN)/frugalml storage down

# Removes local state only (embedded S3 data, BentoML store, DVC cache); never touches git.
clean-local:
	-$(BIN)/frugalml storage down
	rm -rf .frugalml .dvc/cache .dvc/tmp data/prepared data/manifest.csv models/model.pt reports
