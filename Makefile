# make demo       build the environment (once) and run the quickstart on the embedded default
# make test       the fast test suite (minutes on 2 CPU cores)
# make test-slow  end-to-end checks (shortened builds, GRPO runs, servers, the notebook)
# make bench      benchmarks that print ratios measured side by side
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: env demo test test-slow bench clean
env:
	@bash tools/bootstrap.sh

demo: env
	$(PY) -m adaptune demo

test: env
	$(PY) -m pytest -q

test-slow: env
	$(PY) -m pytest -q -m slow

bench: env
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
