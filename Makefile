# Two commands do all the set-up on a fresh machine:
#   make chat   creates .venv, installs, (re)indexes the bundled corpus when missing or stale, opens the chat
#   make test   creates .venv, installs (with the test tools and Debian's chromium), runs the tests
# Both are idempotent: a second run installs nothing and re-embeds nothing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: install index chat test browser bench eval clean serve-stack

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: 2.13.0 is the CPU wheel; an unpinned torch pulls gigabytes of CUDA.
	$(PY) -m pip install -q "torch==2.13.0"
	# llama-cpp-python compiles from source (~7 min on 2 cores); pip's wheel cache makes reruns fast.
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

index: install
	$(VENV)/bin/rag ingest

chat: index
	$(VENV)/bin/rag serve

# A Chroma server, a llama.cpp server and `rag serve` pointed at both, on 127.0.0.1 (see README: several machines).
serve-stack: install
	scripts/serve-stack.sh

browser:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi; }

test: install browser
	$(PY) -m pytest

bench: index
	$(PY) benchmarks/run.py

# Blind sets held back until the end of the work they measure (see eval/README.md): scored only by naming them.
HELD_OUT := eval/qa_blind15.jsonl

eval: index
	$(VENV)/bin/rag eval --json benchmarks/results/eval_dev.json
	for set in $(filter-out $(HELD_OUT),$(wildcard eval/qa_blind*.jsonl)); do \
		name=$$(basename $$set .jsonl); \
		$(VENV)/bin/rag eval $$set --json benchmarks/results/eval_$${name#qa_}.json || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache
