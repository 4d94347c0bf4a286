# Two commands matter: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The exact torch pin keeps a local CPU build where one is offered (find-links) and takes the
# CUDA build from the registry elsewhere; the package's own range (<2.14) then keeps it.
TORCH_SPEC ?= torch==2.13.0
# The package's extras: dev-cpu brings CPU ONNX Runtime; on a GPU server `make test EXTRAS=dev-gpu`
# (onnxruntime-gpu) in a fresh .venv (`make clean` first: the two builds must not be mixed).
EXTRAS ?= dev-cpu
DEMO_OUT ?= demo-output

.PHONY: demo test lint format bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nst-batch demo -o $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(VENV)/.installed
	$(PY) benchmarks/cpu.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
