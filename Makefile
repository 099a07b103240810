# Two commands do everything on a fresh machine: `make demo` and `make test`.
SEMANTICA_HOME ?= $(CURDIR)/.semantica
PORT ?= 8188
export SEMANTICA_HOME

VENV := $(SEMANTICA_HOME)/venv
PYTHON := $(VENV)/bin/python
COMFY := $(SEMANTICA_HOME)/comfyui
COMFY_BASE := $(SEMANTICA_HOME)/comfy-base
# Tests and the demo never reach a model hub: fail at once instead of hanging.
export HF_HUB_OFFLINE := 1

.PHONY: setup test demo comfyui bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PYTHON) -m pytest -ra $(PYTEST_ARGS)

demo: setup
	$(PYTHON) -m training.demo --out out/demo

comfyui: setup
	@$(PYTHON) scripts/run_comfyui.py --comfyui $(COMFY) --base $(COMFY_BASE) --port $(PORT)

bench: setup
	$(PYTHON) -m training.cli bench

clean:
	rm -rf out .pytest_cache
