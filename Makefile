PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: demo test install install-dev browser lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev,docs,green,serve]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/lmforge quickstart

# the playground's browser test drives Debian's chromium (tests/serve/test_playground.py; skipped without one)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "no chromium here: the playground's browser test will be skipped"

test: install-dev browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install-dev
	$(BIN)/python bench/train_gpt.py
	$(BIN)/python bench/pretrain_bert.py
	$(BIN)/python bench/shakespeare_char.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/encode.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
