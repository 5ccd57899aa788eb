# All set-up is idempotent: re-running a target only redoes what is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.twostep-installed
CONSTRAINTS := $(VENV)/torch-constraints.txt
TORCH_VERSION := 2.13.0

.PHONY: setup browser demo test test-reliability lint clean-runs

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first (the CPU wheel on disk), then everything else with torch pinned so no
# resolver step can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	echo "torch==$(TORCH_VERSION)" > $(CONSTRAINTS)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	$(BIN)/pip check
	touch $(STAMP)

demo: setup
	$(BIN)/distill run --config toy

# A real browser for the page checks (report.html, dashboards): Debian's chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "chromium is missing: sudo apt-get install chromium (browser tests need it)"; \
	  exit 1; fi; }

test: setup browser
	$(BIN)/python -m pytest -q --durations=10

# The whole fault-injection suite (kills at seeded points of every stage, ...): long.
test-reliability: setup browser
	$(BIN)/python -m pytest -q -m "soak or not soak" tests/reliability

lint: setup
	$(BIN)/ruff check .

clean-runs:
	rm -rf runs
