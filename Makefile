# The README's two commands are `make demo` and `make test`; each sets up .venv first.
.PHONY: setup demo test test-fast lint docs bench bench-gpu smoke-paper slurm-up slurm-down

# bench-gpu runs where the GPU is: that node's python unless this checkout has a .venv
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

setup:
	tools/setup.sh

demo: setup
	.venv/bin/mcmdpo submit recipes/demo.toml

# Starts the single-node SLURM dev cluster (root + apt), then runs every test including the SLURM and
# browser (headless Chromium) ones, on two workers (pytest-xdist; tests/conftest.py decides what shares a worker).
test: setup
	tools/install_test_deps.sh
	. "$$(slurm/dev-cluster/start.sh >/dev/null && echo $${SLURM_DIR:-/tmp/mcmdpo-slurm})/env.sh" && \
	  MCMDPO_REQUIRE_SLURM=1 MCMDPO_REQUIRE_ASSETS=1 MCMDPO_REQUIRE_BROWSER=1 NLTK_DATA=$(CURDIR)/.venv/nltk_data DS_ACCELERATOR=cpu .venv/bin/python -m pytest -q -n 2

test-fast: setup
	NLTK_DATA=$(CURDIR)/.venv/nltk_data DS_ACCELERATOR=cpu .venv/bin/python -m pytest -q -m "not slurm and not slow and not gpu"

lint: setup
	.venv/bin/ruff check mcmdpo tests tools bench && .venv/bin/ruff format --check mcmdpo tests tools bench

# The recipe reference docs/reference/*.md, rendered from the specs (tests/test_docs.py says when it is stale).
docs: setup
	.venv/bin/python -m mcmdpo.batch.reference docs/reference

bench: setup
	for b in bench/*.py; do [ $$b = bench/gpu_suite.py ] || .venv/bin/python $$b || exit 1; done

# The GPU suite (bench/gpu_suite.py, CUDA only; `ARGS=--cpu-smoke` runs it at tiny shapes on CPU).
bench-gpu:
	$(PYTHON) bench/gpu_suite.py $(ARGS)

# Every paper recipe on stand-ins (tiny model, CPU, local executor) into runs/<name>-smoke: the wiring check.
smoke-paper: setup
	for r in recipes/paper/*.toml; do NLTK_DATA=$(CURDIR)/.venv/nltk_data DS_ACCELERATOR=cpu .venv/bin/mcmdpo submit $$r --smoke || exit 1; done

# NODES=2 (or more): the multi-node dev cluster (one slurmd per network namespace), next to the single-node one.
slurm-up:
	slurm/dev-cluster/start.sh $(if $(NODES),--nodes $(NODES))

slurm-down:
	slurm/dev-cluster/stop.sh $(if $(NODES),--nodes $(NODES))
