# The two everyday commands: `make demo` (the main job) and `make test` (the whole test suite).
# Both create the virtual environment from pyproject.toml + constraints.txt on first use.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install browser clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/prunebench demo

# the report test renders report.html in Debian's headless chromium
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null)

test: $(VENV)/.installed browser
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
