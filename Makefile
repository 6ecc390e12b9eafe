# The README's two commands are `make demo` and `make test`; everything else hangs off `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch goes in first and alone: a later `pip install` of diffusers would otherwise pull a multi-GB
# CUDA build on machines that only have (or want) the CPU one. Override for a specific CUDA wheel.
TORCH_SPEC ?= torch==2.13.0
RECIPE ?= recipes/examples/tiny.yaml
MODE ?=
MODE_FLAG := $(if $(MODE),--mode $(MODE),)
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-e2e test-gpu bench-gpu lint fmt package package-all serve smoke bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml worker_runtime/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	@# Hold torch at the installed build: no dependency may swap it for another (CUDA) one.
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q --disable-pip-version-check -c $(VENV)/torch-constraint.txt -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(PY) -m tests.rig.models build/fixtures/tiny
	$(PY) -m packager.demo

test: setup
	$(PY) -m pytest -q

test-e2e: setup
	$(PY) -m pytest -q -m e2e -p no:cacheprovider tests/e2e

# The GPU tier: run on a machine with CUDA (not part of CI, which has no GPU).
test-gpu: setup
	$(PY) -m pytest -q -m gpu tests/test_worker_gpu.py

# On a GPU machine: the GPU tier, then the cold-start benchmarks at fp16 and bf16, local disk and the
# simulated network volume (needs FUSE: bash .ci/fuse-setup.sh); results in bench/results/*cuda*.json.
bench-gpu: test-gpu
	bash .ci/fuse-setup.sh
	$(PY) bench/coldstart.py --device cuda --precision fp16 --cache warm
	$(PY) bench/coldstart.py --device cuda --precision bf16 --cache warm --variants worker,naive
	$(PY) bench/coldstart.py --device cuda --precision fp16 --storage volume-sim

# Style, formatting, strict types, the import layers (pyproject's importlinter contracts) and the
# rendered Dockerfiles. `make fmt` fixes what can be fixed by machine.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m packager.image.lint_dockerfiles

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

package: setup
	$(VENV)/bin/packager package $(RECIPE) $(MODE_FLAG)

package-all: setup
	$(VENV)/bin/packager package-all recipes $(MODE_FLAG)

serve: setup
	$(VENV)/bin/packager serve $(RECIPE)

smoke: setup
	$(VENV)/bin/packager smoke $(RECIPE) -o build/smoke.png

bench: setup
	$(PY) bench/convert.py
	$(PY) bench/flux.py
	$(PY) bench/coldstart.py
	$(PY) bench/upload.py
	$(PY) bench/image.py
	$(PY) bench/refusals.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
