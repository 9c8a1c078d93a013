# `make demo` and `make test` do all the set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: install install-dev demo test lint docs clean

# The core package: what inference needs (torch, torchvision, pillow, numpy, safetensors,
# huggingface_hub, tqdm).
install: $(VENV)/.installed-core

# Everything: every extra, plus the test, lint and type-check tools.
install-dev: $(VENV)/.installed-dev

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-core: pyproject.toml | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[test]'
	touch $@ $(VENV)/.installed-core

demo: install
	$(BIN)/davit predict demo/cat.jpg demo/coffee.jpg --model davit-tiny_3rdparty_in1k --topk 3

test: install-dev
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d build/site

clean:
	rm -rf $(VENV) build src/*.egg-info
