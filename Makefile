# `make demo` and `make test` do all the set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/davit predict demo/cat.jpg demo/coffee.jpg --model davit-tiny_3rdparty_in1k --topk 3

clean:
	rm -rf $(VENV) build src/*.egg-info
