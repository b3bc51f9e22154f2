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

# CamVid for the demo: a local copy if one is there (or CAMVID=/path), else downloaded to data/camvid.
CAMVID ?= $(firstword $(wildcard ../shared/camvid) data/camvid)
DEMO_STEPS ?= 150
# A short CPU budget of the camvid.yaml recipe; on a GPU run the config as it is (see README).
demo: $(STAMP)
	$(BIN)/bisenet-pl fit --config configs/camvid.yaml \
		--data.root=$(CAMVID) --data.download=$(if $(wildcard $(CAMVID)/trainannot),false,true) \
		--trainer.accelerator=cpu --trainer.precision=32 \
		--trainer.max_steps=$(DEMO_STEPS) --trainer.val_check_interval=$(DEMO_STEPS) --model.warmup_steps=20 \
		--data.batch_size=8 --data.num_workers=2 --data.crop_size=[240,320] --data.scale_range=[0.5,1.5] \
		--trainer.default_root_dir=outputs/demo --trainer.logger.init_args.save_dir=outputs/demo
