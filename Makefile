# The README's commands. `make demo` runs the main job, `make test` the test suite;
# both create .venv first when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out
PORT ?= 8000

.PHONY: setup demo serve test lint bench clean

setup:
	@bash scripts/setup_venv.sh

demo: setup
	$(PY) -m recsys_mtl.cli demo --out $(DEMO_OUT)

# Keeps a scoring server running on the registry `make demo` exported (Ctrl-C stops it).
serve: setup
	$(PY) -m recsys_mtl.cli serve --registry $(DEMO_OUT)/registry --config configs/serving.yaml --port $(PORT)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
