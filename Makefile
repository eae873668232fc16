# llamaindex-rerankers: `make demo` sets up and runs the demo, `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
SHARED ?= $(abspath ../shared)

# Machines without internet keep offline stand-ins in ../shared; point the defaults at them
# explicitly (the library never substitutes a model on its own).
ifneq ($(wildcard $(SHARED)/models/minilm-l6-ce/config.json),)
export LLAMAINDEX_RERANKERS_CROSS_ENCODER ?= $(SHARED)/models/minilm-l6-ce
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
endif
export LLAMAINDEX_RERANKERS_DATA ?= $(SHARED)/data
export TOKENIZERS_PARALLELISM ?= false
export ANONYMIZED_TELEMETRY ?= False
# mkdocs and Material print a banner about MkDocs 2 on every build; it is news, not a warning
# about this site.
export NO_MKDOCS_2_WARNING ?= 1
export DISABLE_MKDOCS_2_WARNING ?= true

.PHONY: setup demo demo-llm serve system-deps llama-server js-deps test lint typecheck docs docs-serve bench-cross-encoder bench-long-text bench-llm bench-llm-server bench-llm-quality tune-llm bench-injection bench-eval bench-remote infinity bench-replicas clean

# Two installs: the demo's (cross-encoder + Chroma + the offline embedding model: no llama.cpp
# compile, since the default demo calls no LLM) and the full one the tests need (every extra,
# the local LLM included). Either stamp is redone when pyproject.toml changes.
setup: $(STAMP)

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The local CPU build of torch first, so that nothing pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	touch $@

$(DEMO_STAMP): pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e ".[cross-encoder,chroma,offline]"
	touch $@

$(STAMP): pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	source scripts/offline-env.sh && $(BIN)/llamaindex-rerankers demo

# The chatbot backend on the sample corpus (http://127.0.0.1:8000/, docs at /docs), offline:
# the cross-encoder ranks the sources; answers come from SmolLM2 through a local llama.cpp
# server, so this installs the server and LLM extras (llama.cpp compiles once, 3-5 min).
serve: $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[cross-encoder,chroma,offline,llm,local-llm,server]"
	source scripts/offline-env.sh && $(BIN)/llamaindex-rerankers serve --demo

# The demo with the cascade (cross-encoder, then SmolLM2 through a local llama.cpp server):
# adds the LLM extras, which compile llama.cpp once (3-5 min).
demo-llm: $(DEMO_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[cross-encoder,chroma,offline,llm,local-llm]"
	source scripts/offline-env.sh && $(BIN)/llamaindex-rerankers demo --reranker cascade

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# The documentation site, strict: a warning, a broken link or a missing reference fails.
# `make test` builds it too (tests/test_docs.py).
docs: setup
	$(BIN)/mkdocs build --strict --site-dir site

# Serves on http://127.0.0.1:8001/llamaindex-rerankers/ (the path of site_url), reloading on edits.
docs-serve: setup
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# Debian's chromium for the chat page's browser test (playwright drives it; it never downloads
# a browser of its own), and Debian's redis-server for the Redis cache, session and replica
# tests (each test run starts its own on a free port). Installed with apt when missing and we
# are root, as on CI.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else echo "install Debian's$$missing (sudo apt-get install -y$$missing) for the tests" >&2; exit 1; fi; \
	fi

# llama.cpp's own server (parallel slots, continuous batching), compiled from the pinned
# llama-cpp-python sdist into .cache/llama-server/ (4-5 min on 2 cores, once; skipped when built).
# local_llm_server() uses it when it is there, else llama-cpp-python's server.
llama-server: $(VENV)/.created
	PYTHON=$(BIN)/python scripts/build-llama-server.sh

# The Vercel AI SDK (npm `ai`, pinned by tests/js/package-lock.json) for the chat client test
# (tests/server/test_ai_sdk.py): `npm ci`, redone only when the lock file changes.
JS := tests/js
$(JS)/node_modules/.installed: $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

js-deps: $(JS)/node_modules/.installed

# The tests run the local LLM on llama-server, and fail (not skip) its tests if it is missing.
# Infinity too: RemoteReranker is tested against a rerank server we did not write.
test: lint typecheck system-deps llama-server js-deps infinity
	source scripts/offline-env.sh && LLAMAINDEX_RERANKERS_REQUIRE_LLAMA_SERVER=1 \
	  LLAMAINDEX_RERANKERS_REQUIRE_INFINITY=1 $(BIN)/python -m pytest

bench-cross-encoder: setup
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_cross_encoder.py

bench-long-text: setup
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_long_text.py

bench-llm: setup
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_llm.py --rerankers bm25,llm --tag ours

# llama-cpp-python's server vs llama-server (1 and 4 slots) judging DL19 passages.
bench-llm-server: setup llama-server
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_llm_server.py

# LLM reranking quality on DL19, SciFact and NFCorpus (first 10 test queries each, BM25 top-20):
# ours (defaults and each option), the cascade and the cross-encoder; then LlamaIndex's LLM
# rerankers beside ours, uncached, on the first 5 DL19 queries (the published runs).
# Prompt injection on the third blind set (about 10 min; see benchmarks/bench_injection.py).
bench-injection: setup llama-server
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_injection.py --split holdout3 \
	  --contestants llm,llm-none,cascade,cascade-nodetect,ce-fusion,cross-encoder,cross-encoder-detect,rankgpt,llmrerank \
	  --tag holdout3

bench-llm-quality: setup llama-server
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_llm_quality.py --queries 10 \
	  --rerankers none,cross-encoder,llm,cascade
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_llm_quality.py --name llm_speed \
	  --datasets trec-dl-2019 --queries 5 --cache .cache/llm_speed.sqlite \
	  --rerankers none,llm,cascade,llmrerank,structuredllmrerank,rankgpt

# Where the LLM reranker's defaults were chosen: SciFact and NFCorpus test queries 51-55.
tune-llm: setup llama-server
	source scripts/offline-env.sh && $(BIN)/python benchmarks/tune_llm.py --queries 5

# RemoteReranker through our serve (and Infinity when `make infinity` built it) vs the local
# cross-encoder, DL19 BM25 top-20, all 43 queries (~3 min on 2 cores).
bench-remote: setup
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_remote.py $(if $(wildcard $(INFINITY_VENV)/bin/infinity_emb),--infinity $(INFINITY_VENV)/bin/infinity_emb)

# Infinity (infinity-emb), a rerank server we did not write, for tests/server/test_remote_serve.py
# and bench-remote. Its own virtualenv: infinity-emb 0.0.78 calls tokenizer APIs that
# transformers 5 removed, so it gets transformers 4.49 (and the huggingface_hub and
# sentence-transformers that go with it); torch comes from our venv (a .pth file written first,
# so that pip sees it installed and does not fetch a second, CUDA, build).
INFINITY_VENV := .cache/infinity-venv
infinity: $(INFINITY_VENV)/bin/infinity_emb

$(INFINITY_VENV)/bin/infinity_emb: $(STAMP)
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > "$$($(INFINITY_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz_main_venv.pth"
	$(INFINITY_VENV)/bin/pip install --quiet "infinity-emb[server]==0.0.78" "transformers>=4.44,<4.50" "huggingface_hub<1" "sentence-transformers>=3,<4"

# Two serve replicas sharing one Redis (judgements and sessions) under 8 and 50 concurrent chat
# and retrieve clients, 25 s per phase (about 3 min with start-up; needs redis-server).
bench-replicas: setup system-deps llama-server
	source scripts/offline-env.sh && $(BIN)/python benchmarks/bench_replicas.py --seconds 25

# Every published `llamaindex-rerankers eval` run (about 2.5 h on 2 cores) and their summary table.
bench-eval: setup
	source scripts/offline-env.sh && $(BIN)/python benchmarks/eval_matrix.py

# Re-execute every notebook in place with its full settings, saving the outputs (commit them).
.PHONY: notebooks
notebooks: setup
	source scripts/offline-env.sh && $(BIN)/python scripts/execute_notebooks.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info site
