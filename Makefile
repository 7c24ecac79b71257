# The two commands: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup serve test test-slow lint bench loadgen clean bytecode lock

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@$(MAKE) --no-print-directory bytecode
	@touch $(STAMP)

# Byte-compile our sources: where PYTHONDONTWRITEBYTECODE is set (as on this project's
# machines) every start would otherwise compile them again (~0.16 s of a ~2 s start).
bytecode:
	@$(PY) -m compileall -q cim_flow kernels >/dev/null

setup: $(STAMP)

serve: $(STAMP) bytecode
	$(PY) -m cim_flow serve --demo

test: $(STAMP) lint
	$(PY) -m pytest

# ruff (pyproject's [tool.ruff]): undefined and unused names and the like, before the tests
lint: $(STAMP)
	$(PY) -m ruff check --quiet .

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

bench: $(STAMP)
	cd asv_benchmarks && ../$(PY) -m asv machine --yes >/dev/null && \
		../$(PY) -m asv run --python=same --quick --show-stderr $(ASV_ARGS)

loadgen: $(STAMP)
	$(PY) -m cim_flow loadgen --rate 10000 --duration 10

clean:
	rm -rf $(VENV) .cim_flow asv_benchmarks/.asv

# constraints.txt from what a fresh install resolves today (a new numba, msgspec, ...);
# then `make test` on it before committing: CI installs exactly these
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/python -m pip install --quiet --upgrade pip
	.lockvenv/bin/python -m pip install --quiet -e '.[dev]'
	{ head -3 constraints.txt; .lockvenv/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .lockvenv
