# Commands that work on a fresh machine (see README):
#   make demo   install, then run the whole curriculum on the embedded default and evaluate it
#   make test   install, then run the test suite
#   make lint   install, then run ruff (pyproject.toml [tool.ruff]) over src and tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pinned to the builds that install from local disk here.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m medgpt_oss.pipeline recipe=tiny_demo out_dir=outputs/demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf $(VENV) outputs data .pytest_cache
