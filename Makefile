# The README's commands. `make demo` runs the main job, `make test` the test suite;
# both create .venv first when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out
PORT ?= 8000

.PHONY: setup demo serve test lint bench fuzz clean

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

# Property-based fuzzing of POST /score on a real server (tests/test_fuzz_server.py): FUZZ_EXAMPLES
# examples in total (the test suite runs 500), failures shrunk to a minimal example and saved to
# bench/out/fuzz-failures/; prints the requests per generator by status code and writes them to
# bench/out/fuzz.json. About 15 minutes on 2 cores when nothing fails.
FUZZ_EXAMPLES ?= 20000
fuzz: setup
	RECSYS_MTL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) RECSYS_MTL_FUZZ_SHRINK=1 RECSYS_MTL_FUZZ_REPORT=bench/out/fuzz.json \
		$(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz_server.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
