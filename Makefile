# The two commands a newcomer needs: `make run` and `make test`. Both install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= .demo

.PHONY: install run demo-index browser audit audit-tools bench test test-slow lint bench-quality bench-views bench-ingest bench-api bench-hf bench-search bench-breakdown bench-index bench-finetune bench-duplicates bench-ray bench-install bench-int8-cpus bench-cli-search bench-second-pass bench-second-pass-finetuned test-wheel docs emulator clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# pip-audit lives in its own environment: its dependencies are not the service's.
AUDIT_STAMP := .venv-audit/.installed
$(AUDIT_STAMP):
	$(PYTHON) -m venv .venv-audit
	.venv-audit/bin/pip install --quiet --disable-pip-version-check pip-audit==2.10.1
	touch $(AUDIT_STAMP)

audit-tools: $(AUDIT_STAMP)

# Every pin of requirements.lock against OSV; fails on a finding not triaged in audit-ignore.txt,
# and says AUDIT NOT RUN where the service cannot be reached (see tools/audit.py).
audit: install audit-tools
	$(BIN)/python tools/audit.py --out test-artifacts/audit.json

# Index the offline demo photos into $(DEMO) and serve the API on 127.0.0.1:8000.
demo-index: install
	$(BIN)/imagefinder demo-data $(DEMO)/photos
	@# The demo index is disposable: one built by an older encoder version is rebuilt.
	$(BIN)/imagefinder --home $(DEMO) index $(DEMO)/photos || { \
	  echo "rebuilding the demo index from scratch"; rm -rf $(DEMO)/index; \
	  $(BIN)/imagefinder --home $(DEMO) index $(DEMO)/photos; }

run: demo-index
	@echo "Ready: curl -F file=@$(DEMO)/photos/chelsea.png 'http://127.0.0.1:8000/search?k=3'"
	$(BIN)/imagefinder --home $(DEMO) serve

# The page's tests drive a real browser: Debian's Chromium, installed here when it is missing.
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Chromium (Debian package) for the page's browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The int8 agreement test runs the encoder on an emulated CPU without VNNI: Debian's qemu-user.
emulator:
	@command -v qemu-x86_64 >/dev/null || { \
	  echo "installing qemu-user (Debian package) for the int8 agreement test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq qemu-user >/dev/null; }

test: install browser emulator audit-tools
	$(BIN)/ruff check src tests bench tools
	IMAGEFINDER_REQUIRE_BROWSER=1 IMAGEFINDER_REQUIRE_EMULATOR=1 $(BIN)/python -m pytest -q -m "not slow"

# The wheel as a user installs it: built with `python -m build`, installed with only the core
# dependencies into a new virtual environment, then demo-data, index, search and serve used
# (tools/wheel_smoke.py). .ci/run runs it after make test.
test-wheel: install
	rm -rf dist
	$(BIN)/python -m build --wheel --no-isolation --outdir dist . >/dev/null
	$(BIN)/python tools/wheel_smoke.py dist/imagefinder-*.whl

# The int8 default on an emulated CPU without VNNI next to this one: the 17 demo photos with and
# without the fix, and the dev benchmark's top-1 (~10 min).
bench-int8-cpus: install emulator
	$(BIN)/python bench/int8_cpus.py --out bench/results/int8_cpus.json

# Repeated CLI searches: in their own process vs answered by a running `serve` (~1 min).
bench-cli-search: install
	$(BIN)/python bench/cli_search.py --out bench/results/cli_search.json

# Installed size of the core and of each extra, in new virtual environments (~10 min).
bench-install: install
	rm -rf dist
	$(BIN)/python -m build --wheel --no-isolation --outdir dist . >/dev/null
	$(BIN)/python tools/install_sizes.py dist/imagefinder-*.whl --out bench/results/install.json

# The documentation: the generated pages (configuration, benchmarks, API reference) written again,
# then MkDocs in strict mode into site/.
docs: install
	$(BIN)/python tools/gen_docs.py
	$(BIN)/python -m mkdocs build --strict

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check src tests bench tools

# Dev benchmark (../shared/benchmarks): recall@1 etc. of the default encoder -> bench/results/.
bench-quality: install
	$(BIN)/python bench/dev_benchmark.py --out bench/results/dev_benchmark.json
	$(BIN)/python bench/dev_benchmark.py --query-views single --out bench/results/dev_benchmark_single_view.json
	$(BIN)/python bench/dev_benchmark.py --query-views thorough --out bench/results/dev_benchmark_thorough.json
	$(BIN)/python bench/dev_benchmark.py --encoder efficientnet-lite0-fp32 --out bench/results/dev_benchmark_fp32.json
	$(BIN)/python bench/dev_benchmark.py --encoder efficientnet-lite0-fp32 --query-views single --out bench/results/dev_benchmark_fp32_single_view.json

# Fine-tuning on the dev benchmark next to the base, in one run: self-supervised on the
# near-duplicate collection, supervised (SupCon and proxy softmax) on same_class (~35 min).
bench-finetune: install
	$(BIN)/python bench/finetune.py --views adaptive,single,thorough --out bench/results/finetune.json

# index --engine ray (local Ray with 1 and 2 CPUs) next to the single-process indexer on the same
# photos in one run: images/s, time to first result, peak memory of driver and Ray (~5 min).
bench-ray: install
	$(BIN)/python bench/ray.py --out bench/results/ray.json

# The duplicates scan on the dev benchmark next to imagededup (PHash, DHash) and fastdup, the copy
# flag's calibration on small, copy-free and copy-rich collections, and a scan of 1M vectors
# (~20 min). The peers live in their own environment: fastdup's licence forbids commercial use,
# so it is a reference here, never a dependency.
PEERS := bench/.venv-peers
$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --disable-pip-version-check --no-deps imagededup==0.3.3.post2
	$(PEERS)/bin/pip install --quiet --disable-pip-version-check fastdup==2.54 numpy==1.26.4 \
	  scipy==1.17.1 PyWavelets==1.9.0 pillow==10.3.0 tqdm==4.66.3 scikit-learn==1.5.0 matplotlib==3.11.2
	touch $@

bench-duplicates: install $(PEERS)/.installed
	$(BIN)/python bench/duplicates.py --peers-python $(PEERS)/bin/python --finetune --out bench/results/duplicates.json

# Extra query views on the dev benchmark: 39 views embedded once, 30 configurations scored (~7 min).
bench-views: install
	$(BIN)/python bench/query_views_sweep.py --out bench/results/query_views_sweep.json

# 2,000-row CSV over a local HTTP server: images/s, stage times, every row accounted for.
bench-ingest: install
	$(BIN)/python bench/ingest_csv.py --out bench/results/ingest_csv.json

# POST /search under load: 1 and 8 clients, micro-batching off and on.
bench-api: install
	$(BIN)/python bench/api_load.py --out bench/results/api_load.json

# Hugging Face encoders' CPU speed next to the default (tiny test models unless given others).
bench-hf: install
	$(BIN)/python bench/hf_speed.py --out bench/results/hf_speed.json

# Indexing speed on 2-12 MP photos: reference pipeline vs ImageFinder vs encoder-only; search latency.
bench: install
	$(BIN)/python bench/speed.py --out bench/results/speed.json
	@if [ -d ../shared/benchmarks ]; then $(MAKE) bench-second-pass; else echo "bench-second-pass skipped: no ../shared/benchmarks"; fi

# A query without a copy: the second pass with the view gate, without it (thorough) and single,
# over HTTP at a 100k index and with a ViT-B/16-sized model (about 8 min).
bench-second-pass: install
	$(BIN)/python bench/second_pass.py --out bench/results/second_pass.json

# Why the second pass gains less after self-supervised fine-tuning: per query, settled or not, the
# gate's probability, right at 1 with and without the extra views, for the base model and one
# trained here (about 50 min); whether the frozen early blocks would feed a better gate; and
# gates fitted on five draws of photos, on the vector, on straight edges and flat borders, and both;
# cheaper second passes (fewer views, regions chosen from the first pass's feature map) and larger
# gate budgets, for both models.
bench-second-pass-finetuned: install
	$(BIN)/python bench/finetune_device.py --runs self-supervised --device cpu --keep bench/work/second_pass_finetuned --out bench/work/second_pass_finetuned/training.json
	$(BIN)/python bench/second_pass_queries.py --model base --out bench/results/second_pass_queries_base.json
	$(BIN)/python bench/second_pass_queries.py --model bench/work/second_pass_finetuned/self-supervised.onnx --out bench/results/second_pass_queries_finetuned.json
	$(BIN)/python bench/gate_features.py --out bench/results/gate_features.json
	$(BIN)/python bench/gate_fits.py --model bench/work/second_pass_finetuned/self-supervised.onnx --per-query bench/results/second_pass_queries_finetuned.json --out bench/results/gate_fits.json
	$(BIN)/python bench/second_pass_choices.py --model base --out bench/results/second_pass_choices_base.json
	$(BIN)/python bench/second_pass_choices.py --model bench/work/second_pass_finetuned/self-supervised.onnx --out bench/results/second_pass_choices_finetuned.json

# Where a 2 MP query's time goes in-process, and how steady the encoder is on this machine (~1.5 min).
bench-breakdown: install
	$(BIN)/python bench/search_breakdown.py --out bench/results/search_breakdown.json

# The store from 25k to 1M vectors, synthetic and real embeddings: build, memory, latency, recall, reopen.
# Real rows go up to REAL_N: the first build of their 1M cache takes about 2.5 hours here (resumable).
REAL_N ?= 1000000
bench-index: install
	$(BIN)/python bench/real_embeddings.py --n $(REAL_N) --if-missing
	$(BIN)/python bench/index.py --out bench/results/index.json

# POST /search latency against a real server on 127.0.0.1 -> bench/results/search_latency.json
bench-search: install
	$(BIN)/python bench/search_latency.py --out bench/results/search_latency.json

clean:
	rm -rf $(VENV) .venv-audit $(DEMO) .pytest_cache
