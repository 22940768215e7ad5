# tfx-e2e: `make run` (set up + run the pipeline on the bundled data), `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tfx-e2e-installed
# TensorFlow's C++ start-up chatter (CUDA probing on a machine without a GPU).
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup run run-beam spans watch compile-vertex test test-unit lint lock image schema serve rollout predict serving-config bench-pipeline bench-serving monitor decay bench-monitor prune

setup: $(STAMP)

# The lock pins every dependency of tfx 1.16.0 for CPython 3.11; tfx and
# ml-pipelines-sdk go in last with --ignore-requires-python (their metadata says <3.11).
# Every file installed is checked against the hashes in requirements/*.txt (--require-hashes): uv first, by pip.
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as here), every process would otherwise
# compile TensorFlow's modules again (import tensorflow: 9.2 s without .pyc files, 3.7 s with).
$(STAMP): requirements/lock.txt requirements/tfx.txt requirements/uv.txt setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null || { \
	  echo "error: tfx-e2e needs CPython 3.11 (found: $$($(PYTHON) --version 2>&1 || echo 'no $(PYTHON)')). Set PYTHON=/path/to/python3.11." >&2; exit 1; }
	@[ -x $(PY) ] && $(PY) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements/uv.txt
	$(VENV)/bin/uv pip sync --require-hashes --compile-bytecode --python $(PY) requirements/lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps --ignore-requires-python -r requirements/tfx.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $(STAMP)

# Regenerate requirements/lock.txt (3.11, this machine and CI) from requirements/requirements.in, then
# requirements/image-lock.txt (the TFX image's Python 3.10) from requirements/runtime.in, starting from
# lock.txt's pins so the two differ only where Python 3.10 needs other versions; then tfx.txt and uv.txt.
# Each pin carries the sha256 of every file PyPI has for it (--generate-hashes): installs use --require-hashes.
# Existing pins are kept (uv prefers the output file's versions): `--upgrade-package NAME` moves one.
LOCK := --python-platform x86_64-manylinux_2_28 --generate-hashes
lock: setup
	$(VENV)/bin/uv pip compile --python-version 3.11 $(LOCK) requirements/requirements.in -o requirements/lock.txt
	cp requirements/lock.txt requirements/image-lock.txt
	$(VENV)/bin/uv pip compile --python-version 3.10 $(LOCK) requirements/runtime.in -o requirements/image-lock.txt
	$(VENV)/bin/uv pip compile --python-version 3.10 $(LOCK) --no-deps requirements/tfx.in -o requirements/tfx.txt
	$(VENV)/bin/uv pip compile --python-version 3.11 $(LOCK) requirements/uv.in -o requirements/uv.txt

# The project's image (needs a Docker engine): IMAGE=REGION-docker.pkg.dev/PROJECT/REPO/pipeline:TAG make image
IMAGE ?= tfx-e2e-pipeline:dev
image:
	docker build -t $(IMAGE) .

run: setup
	$(PY) -m runners.local_runner

# data/taxi_spans/: the bundled sample as 16 quarterly spans (span-1/ ... span-16/, each data.csv + _SUCCESS),
# rebuilt from data/taxi/data.csv byte for byte; then e.g. TFX_E2E_DATA_ROOT=data/taxi_spans make run.
spans: setup
	rm -rf data/taxi_spans
	$(PY) -m pipeline.spans data/taxi/data.csv data/taxi_spans

# make data ROWS=<n> [SPANS=<k>] [SEED=<s>] [OUT=<dir>] [SHARD_ROWS=<r>]: n taxi-like rows drawn from
# data/taxi/data.csv as CSV shards, in span-1/ ... span-k/ folders with _SUCCESS markers when SPANS is given
# (docs/scale.md). OUT defaults to data/taxi_<n>[_spans<k>] and must not exist yet; the same SEED, the same bytes.
.PHONY: data
data: setup
	@[ -n "$(ROWS)" ] || { echo "error: data: ROWS=<n> is required, e.g. make data ROWS=1500000 SPANS=4" >&2; exit 2; }
	$(PY) -m pipeline.datagen --rows $(ROWS) --spans $(or $(SPANS),0) --seed $(or $(SEED),0) \
	  --out $(or $(OUT),data/taxi_$(ROWS)$(if $(SPANS),_spans$(SPANS))) $(if $(SHARD_ROWS),--shard-rows $(SHARD_ROWS))

# One run per new complete span of the data root, oldest first, one at a time, every continuous.poll_seconds
# (docs/continuous-training.md#make-watch); ARGS="--once" for a single pass.
watch: setup
	$(PY) -m runners.watcher $(ARGS)

# BeamDagRunner, DirectRunner with a process per core.
run-beam: setup
	TFX_E2E_PROFILE=$${TFX_E2E_PROFILE:-beam} $(PY) -m runners.beam_runner

# Vertex AI Pipelines / KFP 2 pipeline JSON in build/ (needs a TFX_E2E_CONFIG overlay with gcp/vertex settings).
compile-vertex: setup
	TFX_E2E_PROFILE=$${TFX_E2E_PROFILE:-vertex} $(PY) -m runners.kubeflow_v2_runner

# Every tier (pytest.ini): the pipeline-running ones (e2e, services) on two workers, a run keeping about one core
# busy; then the unit tier, a test file per worker. The slowest tests listed.
test: setup
	status=0; \
	$(PY) -m pytest tests -m "not unit" -n 2 --dist loadgroup --durations=25 || status=$$?; \
	$(PY) -m pytest tests -m unit -n 2 --dist loadfile --durations=10 || status=$$?; \
	exit $$status

# The unit tier (no pipeline run, no local service): cloudbuild.yaml's unit-test step. A test file per worker:
# most of the tier's time is server processes starting (TensorFlow's import) and waiting on sockets.
test-unit: setup
	$(PY) -m pytest tests -m unit -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .

# Re-infer schema/schema.pbtxt from the data, keeping the curation in schema/tool.py.
schema: setup
	$(PY) -m schema.tool

# The local model server on what `make run` pushed: REST 127.0.0.1:8501, gRPC 127.0.0.1:8500 (TF Serving's API).
serve: setup
	$(PY) -m serving.server

# The canary controller (rollout.strategy: canary) for the running server: steps, analyses, promotes or rolls back
# each new version (docs/rollout.md); ARGS=status prints the rollout record and the last decisions. With
# rollout.strategy: ab it holds the A/B split; ARGS=ab-report, ARGS=promote, ARGS=reject report and decide.
rollout: setup
	$(PY) -m serving.rollout $(or $(ARGS),run)

# Predictions from the running server for the first rows of the bundled data (ARGS="--grpc", "--rows N", "FILE").
predict: setup
	$(PY) -m serving.client $(ARGS)

# serving/deploy/ (TF Serving: compose, Kubernetes, model/batching/monitoring configs) from the configuration.
serving-config: setup
	TFX_E2E_CONFIG=$${TFX_E2E_CONFIG:-serving/deploy/rollout.yaml} $(PY) -m serving.deploy

# The request log against training, the previous window and the evaluation, per window and version
# (docs/monitoring.md): reports under <output_root>/monitoring/<model>/; exit 3 on an alert (ARGS="--logs PATH").
monitor: setup
	$(PY) -m monitoring.monitor $(ARGS)

# The served version's TFMA metrics on a labelled span of the period it served, kept in a history
# (docs/monitoring.md#model-decay): SPAN=<n> [VERSION=<v>]; exit 3 below evaluator.auc_lower_bound.
decay: setup
	$(PY) -m monitoring.decay --span $(SPAN) $(if $(VERSION),--version $(VERSION)) $(ARGS)

# Retention (pipeline/retention.py): pushed versions beyond retention.keep_versions and the artifacts of runs older
# than the newest retention.keep_runs (marked DELETED in ML Metadata); a successful run does it too.
# ARGS=--dry-run prints what would go.
prune: setup
	$(PY) -m pipeline.retention $(ARGS)

# The model registry (docs/registry.md): every pushed version, newest first, with its run and why, spans,
# hyperparameters, metrics against its baseline, blessing, serving and monitoring state; JSON=1 for JSON.
.PHONY: models lineage
models: setup
	$(PY) -m registry.models $(if $(JSON),--json) $(ARGS)

# Lineage from ML Metadata: make lineage VERSION=<v> (back to the input files and their digests), SPAN=<n> or
# FILE=<path> (forward to every model trained or evaluated on it, pushed and served or not); JSON=1 for JSON.
lineage: setup
	@[ -n "$(VERSION)$(SPAN)$(FILE)" ] || { echo "error: lineage: VERSION=<v>, SPAN=<n> or FILE=<path> is required, e.g. make lineage VERSION=1796014457" >&2; exit 2; }
	$(PY) -m registry.lineage $(if $(VERSION),--version $(VERSION)) $(if $(SPAN),--span $(SPAN)) \
	  $(if $(FILE),--file $(FILE)) $(if $(JSON),--json) $(ARGS)

# Model cards (docs/registry.md#model-cards): a run writes the card of each version it pushes; this writes VERSION's
# again, or the card of every pushed version on disk that has none (Airflow runs, a card a run could not write).
.PHONY: model-card
model-card: setup
	$(PY) -m registry.model_card $(if $(VERSION),--version $(VERSION))

bench-monitor: setup
	$(PY) bench/bench_monitor.py

bench-serving: setup
	$(PY) bench/bench_serving.py

bench-pipeline: setup
	$(PY) bench/bench_pipeline.py

# The whole pipeline (tuning off) at SIZES rows (default 15000,150000,1500000; data/taxi_<n>/ from make data), local
# and beam profiles and TFX's reference, one after the other: times, memory, row counts (docs/benchmarks.md).
.PHONY: bench-scale run-portable
bench-scale: setup
	$(PY) bench/bench_scale.py $(if $(SIZES),--sizes $(SIZES)) $(ARGS)

# The pipeline with its Beam-based components on Beam's job service and two SDK worker pools (environment EXTERNAL),
# which the runner starts on loopback and stops (profile portable; docs/orchestrators.md#portable).
run-portable: setup
	TFX_E2E_PROFILE=$${TFX_E2E_PROFILE:-portable} $(PY) -m runners.portable_runner

# A read-only web page over the runs (DAGs), models and cards, lineage, serving and monitoring (docs/console.md):
# http://127.0.0.1:8600/ (console.host and console.port; ARGS="--port N").
.PHONY: console
console: setup
	$(PY) -m console $(ARGS)
