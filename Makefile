# Set-up and main entry points. TORCH_SPEC lets GPU users pick their own build,
# e.g. `make quickstart TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install browser quickstart test test-all bench clean

$(BIN)/.fedllm-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev,flower]"
	touch $@

install: $(BIN)/.fedllm-installed

# The browser tests drive Debian's chromium (Playwright's own browser download is not used). Installed
# here when missing and possible (root with apt); otherwise those tests are skipped with a note.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing chromium (Debian) for the browser tests"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	    else echo "note: no chromium; the browser tests will be skipped (apt-get install chromium)"; fi; }

quickstart: install
	$(BIN)/fedllm quickstart

test: install browser
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-all: install browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
