# The front door. `make help` lists every target; `make run` takes a fresh clone to a running service.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY      := .venv/bin/python
PIP     := .venv/bin/pip
GPU     ?= 0
EXTRAS  := $(if $(filter 1,$(GPU)),gpu,cpu),train,dev,loadtest
SYNTH   := data/synthetic
DATA    ?= $(SYNTH)
ENCODER := artifacts/encoders/minilm
HOST    ?= 127.0.0.1
PORT    ?= 8000
STAMP   := .venv/.installed-$(if $(filter 1,$(GPU)),gpu,cpu)
RAY_STAMP := .venv/.installed-ray

.PHONY: help setup data encoder train export index serve run test test-fast lint clean bench bench-data loadtest evaluate crossval student batch gpu-check rollout ray serve-ray proto simulate click-crossval

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@rm -f .venv/.installed-*; touch $@

setup: $(STAMP) ## Create .venv with pinned dependencies (GPU=1 for onnxruntime-gpu + faiss-gpu)

# Only the embedded default is ever generated; a user's DATA directory is read, never written.
$(SYNTH)/items.jsonl: | $(STAMP)
	$(PY) -m training.synthetic --out $(SYNTH)

data: $(STAMP) ## Generate the embedded SYNTHETIC catalog into data/synthetic
	$(PY) -m training.synthetic --out $(SYNTH)

$(ENCODER)/encoder.json: | $(STAMP)
	$(PY) -m index.export.text_encoder --out $(ENCODER)

encoder: $(STAMP) ## Export all-MiniLM-L6-v2 (offline PyPI package) to ONNX
	$(PY) -m index.export.text_encoder --out $(ENCODER)

# FEEDBACK=dir trains from the service's impression and feedback log (its RANK_LOG_DIR) as well: inverse-propensity
# weighted click labels (training.feedback), beside DATA's judgments (ARGS='--labels clicks': judgments only test).
FEEDBACK ?=

train: $(STAMP) $(if $(filter $(SYNTH),$(DATA)),$(SYNTH)/items.jsonl) $(ENCODER)/encoder.json ## Train the fusion ranker, evaluate it against baselines (FEEDBACK=logdir: from clicks too)
	$(PY) -m training.cli train --data-dir $(DATA) $(if $(FEEDBACK),--feedback $(FEEDBACK)) $(ARGS)

export: $(STAMP) ## Export the trained ranker to ONNX, check parity, write artifacts/model_card.json
	$(PY) -m training.cli export

# MODEL names the exported model a bundle is built for and served with; a directory without model_card.json (e.g.
# MODEL=none) means zero-shot: MiniLM dense + BM25 search, no trained ranker, no judgments needed. ANALYSIS is BM25's
# lexical analysis (none or a Snowball language, e.g. english): the model's by default, none for a zero-shot bundle.
MODEL ?= artifacts

index: $(STAMP) $(ENCODER)/encoder.json ## Build the bundle (FAISS, BM25, features) in artifacts/bundle (MODEL=none: zero-shot)
	$(PY) -m index.offline.build --data $(DATA) --model $(MODEL) $(if $(ANALYSIS),--analysis $(ANALYSIS))

proto: $(STAMP) ## Regenerate the gRPC modules service/rpc/rank_pb2*.py from service/rpc/rank.proto
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. service/rpc/rank.proto

serve: $(STAMP) ## Serve existing artifacts on $(HOST):$(PORT) (MODEL=none: the zero-shot bundle)
	$(PY) -m service --host $(HOST) --port $(PORT) --model-dir $(MODEL)

run: setup ## The main job: data, encoder, train, export, index, then serve
	@test -f artifacts/model_card.json || $(MAKE) --no-print-directory train export
	@test -f artifacts/bundle/manifest.json || $(MAKE) --no-print-directory index
	$(MAKE) --no-print-directory serve

test: $(STAMP) ## Run the whole test suite (GPU tests skip themselves without a GPU)
	$(PY) -m pytest -q

test-fast: $(STAMP) ## Unit tests only: no trained artifacts, no server, Locust or Prometheus (under a minute)
	$(PY) -m pytest -q -m "not slow and not artifacts and not integration"

lint: $(STAMP) ## ruff (lint + format check) and mypy
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy model training index service

# The pre-rollout load test (python -m loadtests.run): starts the service on a free 127.0.0.1 port unless TARGET names
# a running one, drives it with Locust, writes reports/loadtest-<time>/ and fails when loadtests/slo.toml is missed.
DURATION   ?= 60
USERS      ?= 10
SPAWN_RATE ?= 10
TARGET     ?=

loadtest: $(STAMP) ## Locust load test, report in reports/ (DURATION USERS SPAWN_RATE TARGET=url); fails on a missed SLO
	$(PY) -m loadtests.run --duration $(DURATION) --users $(USERS) --spawn-rate $(SPAWN_RATE) $(if $(TARGET),--host $(TARGET)) $(ARGS)

# Quality of what is served (python -m training.evaluate): the held-out queries of DATA through the real request
# path (in process from the default artifacts, or URL=http://host:port over POST /rank) beside zero-shot MiniLM
# cosine, BM25 and their RRF over the whole catalog; prints a table, writes reports/evaluate-<UTC time>.json.
URL ?=

evaluate: $(STAMP) ## Served quality beside zero-shot MiniLM, BM25, RRF (DATA=dir URL=http://host:port ARGS=...)
	$(PY) -m training.evaluate --data $(DATA) $(if $(URL),--url $(URL)) $(ARGS)

# A new model into the running service (python -m training.release), one gated step at a time: train (unless
# MODEL=dir names an export), export with parity, bundle from the serving bundle's features, offline gate against
# the serving model, shadow on live traffic, canary, promote. Needs RANK_ADMIN_TOKEN; logs to reports/rollout.jsonl.
rollout: $(STAMP) ## Train or take MODEL=dir, gate it offline, shadow, canary, promote (URL=http://host:port, RANK_ADMIN_TOKEN)
	$(PY) -m training.release --url $(or $(URL),http://$(HOST):$(PORT)) --data $(DATA) $(if $(filter command line,$(origin MODEL)),--model $(MODEL)) $(ARGS)

batch: $(STAMP) ## Rank a JSONL file of /rank bodies in process, no HTTP (IN=queries.jsonl OUT=results.jsonl)
	$(PY) -m service.batch --in $(IN) --out $(OUT) $(ARGS)

# A faster query encoder for the CPU (python -m training.student): MiniLM's first layers distilled on DATA's texts,
# exported to artifacts/encoders/student and gated on the held-out queries through the served path (exit 3: failed).
# Serve a student that passed with RANK_QUERY_ENCODER_DIR=artifacts/encoders/student.
student: $(STAMP) $(ENCODER)/encoder.json ## Distil a faster query encoder on DATA and gate it against MiniLM (ARGS=--layers 3)
	$(PY) -m training.student --data $(DATA) $(ARGS)

# K-fold cross-validation by query of the whole pipeline (python -m training.evaluate.crossval): per fold train,
# export, index and serve in process, rank the held-out fold; beside zero-shot serving and search. For small judged
# sets.
FOLDS ?= 5

crossval: $(STAMP) $(ENCODER)/encoder.json ## K-fold CV of train+serve vs zero-shot, served path (DATA=dir FOLDS=5)
	$(PY) -m training.evaluate.crossval --data $(DATA) --folds $(FOLDS) $(ARGS)

# Learning from clicks, evaluated (issue 38): simulated users on a running service that logs with exploration
# (python -m training.evaluate.simulate; LOGS is its RANK_LOG_DIR), then K-fold cross-validation of zero-shot,
# uncorrected and corrected click models and the judgment-trained ceiling on those logs (training.evaluate.click_cv).
SESSIONS ?= 1000
LOGS     ?=

simulate: $(STAMP) ## Simulated users on a running service through /rank and /feedback (DATA URL SESSIONS LOGS=its RANK_LOG_DIR)
	$(PY) -m training.evaluate.simulate --data $(DATA) --url $(or $(URL),http://$(HOST):$(PORT)) --sessions $(SESSIONS) --logs $(LOGS) $(ARGS)

click-crossval: $(STAMP) $(ENCODER)/encoder.json ## K-fold CV of click-trained models vs zero-shot and judgments (DATA LOGS ARGS='--zero-shot bundle')
	$(PY) -m training.evaluate.click_cv --data $(DATA) --logs $(LOGS) --folds $(FOLDS) $(ARGS)

BENCH_ITEMS ?= 100000
BENCH_DATA  := data/synthetic-100k

$(BENCH_DATA)/items.jsonl: | $(STAMP)
	$(PY) -m training.synthetic --out $(BENCH_DATA) --items $(BENCH_ITEMS) --queries 200

artifacts/bundle-100k/manifest.json: $(BENCH_DATA)/items.jsonl
	$(PY) -m index.offline.build --data $(BENCH_DATA) --out artifacts/bundle-100k

bench-data: artifacts/bundle-100k/manifest.json ## Build the 100k-item SYNTHETIC catalog and its HNSW bundle (needs make export)

.venv-bench/bin/python: pyproject.toml
	python3 -m venv .venv-bench
	.venv-bench/bin/pip install -q -e ".[cpu,ray]"

bench: $(STAMP) bench-data .venv-bench/bin/python ## Benchmark service vs naive vs Ray Serve (wrk, c=1/8/32), update BENCHMARKS.md
	@command -v wrk >/dev/null || apt-get install -y wrk
	$(PY) -m loadtests.bench --bundle artifacts/bundle-100k

# Scale-out on Ray (optional): the `ray` extra into .venv, then the service as a Ray Serve application.
$(RAY_STAMP): $(STAMP)
	$(PIP) install -q -e ".[$(EXTRAS),ray]"
	@touch $@

ray: $(RAY_STAMP) ## Install the optional `ray` extra (Ray Serve, Ray Data) into .venv

# `serve run` starts a local Ray head and deploys deploy/ray/serve.yaml (2 replicas on 127.0.0.1:8000; the file
# says what to change for a cluster). Ctrl-C stops Ray. Serves the artifacts `make run` built.
serve-ray: $(RAY_STAMP) ## Serve the existing artifacts on Ray Serve (deploy/ray/serve.yaml: replicas, autoscaling)
	.venv/bin/serve run deploy/ray/serve.yaml

clean: ## Remove generated data and artifacts (keeps .venv)
	rm -rf artifacts data reports

# User catalogs with images (docs/data.md). CLIP: a local CLIPModel directory; nothing is fetched from a model hub.
CLIP          ?= $(RANK_CLIP_DIR)
IMAGE_ENCODER ?= artifacts/encoders/clip
BUNDLE        ?= artifacts/bundle

.PHONY: validate image-encoder ingest bench-images

validate: $(STAMP) ## Check a dataset in the user data format (DATA=dir): every problem with file, line, field
	$(PY) -m index.cli.validate $(DATA) $(ARGS)

image-encoder: $(STAMP) ## Export a local CLIP checkpoint's image tower to ONNX (CLIP=dir, or RANK_CLIP_DIR)
	@test -n "$(CLIP)" || { echo "error: set CLIP=/path/to/local/clip (a CLIPModel.save_pretrained directory)" >&2; exit 2; }
	$(PY) -m index.export.image_encoder --clip $(CLIP) --out $(IMAGE_ENCODER)

ingest: $(STAMP) $(ENCODER)/encoder.json $(if $(filter ray,$(ENGINE)),$(RAY_STAMP)) ## Ingest a catalog (DATA=dir, images or vectors) into BUNDLE, resumable (ENGINE=ray WORKERS=n: Ray Data)
	$(PY) -m index.cli.ingest --data $(DATA) --image-encoder $(IMAGE_ENCODER) --out $(BUNDLE) $(if $(ENGINE),--engine $(ENGINE)) $(if $(WORKERS),--workers $(WORKERS)) $(ARGS)

# From a bare checkout on a CUDA machine: the gpu extra, then loadtests/bench/gpu_check.py (about 8 minutes).
# ARGS=--rehearse runs the same steps on the CPU, for trying the script where there is no GPU.
gpu-check: ## GPU figures on a CUDA machine: GPU tests, CUDA training, CUDA service rows, into BENCHMARKS.md
	$(MAKE) --no-print-directory setup GPU=$(if $(findstring --rehearse,$(ARGS)),0,1)
	.venv/bin/python -m loadtests.bench.gpu_check $(ARGS)

bench-images: $(STAMP) ## Image decode + encode throughput, tiny and ViT-B/32 CLIP towers (random weights)
	$(PY) -m loadtests.bench.images $(ARGS)
