# orbitmesh developer tasks. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test unit lint demo bench fuzz clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,fallback]'
	@# numba compiles the geometry, pass and batched-plane kernels once (~1.5 min) and caches
	@# them: here, not in a run
	$(BIN)/python -c "from orbitmesh.core.engine import compile_kernels; compile_kernels(); \
		from orbitmesh.core.passes import load_kernel; load_kernel(); \
		from nodes.plane import compile_plane; compile_plane()"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest -m "not broker and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/orbitmesh run scenarios/demo.yaml

# The fuzzers at depth (CI runs 300 cases each): scenarios, and every MQTT topic family (decoders,
# a run on the memory broker, a live flood of mosquitto); ORBITMESH_FUZZ_SEED=N picks another seed.
fuzz: $(STAMP)
	ORBITMESH_FUZZ_CASES=$${ORBITMESH_FUZZ_CASES:-5000} $(BIN)/pytest -q tests/test_scenario_fuzz.py \
		tests/test_mqtt_fuzz.py

bench: $(STAMP)
	$(BIN)/python bench/geometry.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
