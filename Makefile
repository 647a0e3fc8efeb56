# Two commands: `make run` (set up, then materialize the asset graph on the embedded sample)
# and `make test` (set up, then run the test suite). Both create .venv when it is missing.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# `dg launch` (Dagster's recommended CLI) loads the project named in pyproject.toml ([tool.dg]).
DG := $(VENV)/bin/dg
export VIRTUAL_ENV := $(CURDIR)/$(VENV)

.PHONY: setup run test test-fast ui-check lint bench dev mlflow clean serve

setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: here it takes the local CPU build, elsewhere the default (CUDA) build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Materialize the whole graph: the daily partitions of the dataset in one single-run backfill, the
# catalogs and the text view; then, for a historic day that has a test window after it
# (`--historic`), the week's pretraining in two data-parallel workers (torchrun, gloo on CPU) and
# the day's models with the from-scratch comparison, so that model_evaluation shows the full table;
# then the same for the last day, fine-tuned from its own week's pretraining. Pretraining is weekly:
# the graph of the week's Saturday comes first, since its validation snapshot is what it reads.
MODEL_ASSETS := knowledge_graph,finetuned_recommender,recommendations,model_evaluation,similar_items
PARTITION = $$($(PY) -m unirec_dagster.partitions $(1))

run: setup
	$(PY) -m unirec_dagster.slots  # a killed earlier run must not keep the warehouse slot
	$(DG) launch --assets raw_events --partition-range "$(call PARTITION,)"
	$(DG) launch --assets 'raw_items,raw_users,item_text_embeddings'
	$(DG) launch --assets knowledge_graph --partition "$(call PARTITION,--historic --week-end)"
	$(DG) launch --assets pretrained_encoder --partition "$(call PARTITION,--historic --week)" \
		--config-json '{"ops": {"pretrained_encoder": {"config": {"world_size": 2}}}}'
	$(DG) launch --assets '$(MODEL_ASSETS)' --partition "$(call PARTITION,--historic)" \
		--config-json '{"ops": {"finetuned_recommender": {"config": {"from_scratch": true}}}}'
	$(DG) launch --assets knowledge_graph --partition "$(call PARTITION,--last --week-end)"
	$(DG) launch --assets pretrained_encoder --partition "$(call PARTITION,--last --week)"
	$(DG) launch --assets '$(MODEL_ASSETS)' --partition "$(call PARTITION,--last)"

test: setup
	$(PY) -m pytest tests --ignore=tests/browser

# The quick tier while editing: everything but the whole-pipeline and multi-process tests.
test-fast: setup
	$(PY) -m pytest tests --ignore=tests/browser -m "not slow"

# After `make run`: the Dagster and MLflow UIs in a real browser (Playwright driving Chromium:
# Debian's `chromium` package, or UNIREC_CHROMIUM). Screenshots in data/ui-check/.
ui-check: setup
	$(PY) -m pytest tests/browser

lint: setup
	$(VENV)/bin/ruff check unirec_dagster tests bench
	$(VENV)/bin/mypy unirec_dagster
	$(DG) check defs  # the code location loads: every asset, check, job, schedule and sensor

bench: setup
	$(PY) bench/ingest_year.py

# The read API over the newest published night (127.0.0.1, UNIREC_API_PORT, default 8000).
serve: setup
	$(PY) -m unirec_dagster.api

# dg dev reads the project from pyproject.toml; `dagster dev -w workspace.yaml` starts the same.
dev: setup
	$(DG) dev

# The experiment tracking UI over the runs the assets logged (UNIREC_MLFLOW_URI, default the SQLite
# store beside the warehouse: data/warehouse.mlflow.db for data/warehouse.duckdb).
mlflow: setup
	$(VENV)/bin/mlflow ui --backend-store-uri "$$($(PY) -c 'from unirec_dagster import settings; print(settings.mlflow_uri())')" --port 5000

clean:
	rm -rf $(VENV) $(DAGSTER_HOME) data/warehouse.duckdb data/warehouse.duckdb.wal data/models data/warehouse.mlflow.db data/warehouse.mlflow-artifacts
