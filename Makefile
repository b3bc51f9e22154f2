# Two commands matter: `make demo` (set up, then train BiSeNetV2 on CamVid) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first; on a CUDA machine use e.g. TORCH_SPEC="torch --index-url ...".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-all demo lock clean notebooks

setup: $(STAMP)

# The tested environment, pinned with hashes (make lock). REQUIREMENTS= resolves afresh instead,
# e.g. with a CUDA build of torch: make test REQUIREMENTS= TORCH_SPEC="torch --index-url ...".
REQUIREMENTS ?= requirements.lock

$(STAMP): pyproject.toml $(REQUIREMENTS)
	$(PYTHON) -m venv $(VENV)
ifneq ($(REQUIREMENTS),)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(REQUIREMENTS)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
else
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
endif
	touch $(STAMP)

# Re-pin requirements.lock after changing dependencies (takes minutes: every wheel is hashed).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-tools
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --extra dev --strip-extras \
		--no-emit-index-url --no-emit-find-links -c $(VENV)/torch-constraint.txt -o requirements.lock pyproject.toml

# The linters first (seconds), then the suite, one pytest-xdist worker per core (at most 4): much of it waits on
# Python-bound exporters, compilers and processes of its own, so two workers on 2 cores took 6.0 minutes
# where one took 11.7. PYTEST_ARGS= runs it in one process.
PYTEST_ARGS ?= -n auto --maxprocesses=4 --dist worksteal
# The runs marked slow (real CamVid learning, the benchmark with the released weights, a two-process DDP run,
# bf16 resuming where bf16 is emulated) are left to `make test-all`: 4 minutes on their own on a 2-core AVX2 CPU.
PYTEST_MARKERS ?= not slow
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	WANDB_MODE=disabled $(BIN)/python -m pytest -m "$(PYTEST_MARKERS)" $(PYTEST_ARGS)

test-all:
	$(MAKE) test PYTEST_MARKERS=

clean:
	rm -rf $(VENV) lightning_logs outputs .pytest_cache

# CamVid for the demo: a local copy if one is there (or CAMVID=/path), else downloaded to data/camvid.
CAMVID ?= $(firstword $(wildcard ../shared/camvid) data/camvid)
DEMO_MINUTES ?= 10
# The CPU recipe (configs/camvid_cpu.yaml) for about DEMO_MINUTES of training on this CPU: a step and a
# validation's forward pass are timed first and the schedule sized to them. Sequence 0006R0 is held out as the dev split, so that one of
# the two printed scores is on scenes the network never saw. On a GPU run configs/camvid.yaml.
demo: $(STAMP)
	$(BIN)/bisenet-pl fit --config configs/camvid_cpu.yaml \
		--data.root=$(CAMVID) --data.download=$(if $(wildcard $(CAMVID)/trainannot),false,true) \
		--data.dev_sequences=[0006R0] --train_minutes=$(DEMO_MINUTES) \
		--trainer.default_root_dir=outputs/demo

# The notebooks committed with their outputs, regenerated on the real data.
notebooks: $(STAMP)
	BISENET_DATA_ROOT=$(abspath $(CAMVID)) $(BIN)/python notebooks/execute.py notebooks/01_dataset.ipynb \
		notebooks/02_results.ipynb notebooks/03_ablations.ipynb
