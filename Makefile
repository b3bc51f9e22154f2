# Two commands matter: `make demo` (set up, then train BiSeNetV2 on CamVid) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install first; on a CUDA machine use e.g. TORCH_SPEC="torch --index-url ...".
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) lightning_logs outputs .pytest_cache
