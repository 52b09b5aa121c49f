# The two set-up commands: `make demo` (install + the main job on the embedded SyntheticSounds data)
# and `make test` (install + the test suite). Both install into a virtual environment, .venv, unless
# one is already active (VIRTUAL_ENV or CONDA_PREFIX set), in which case they install into it.
#
# torch: if the environment can already import torch (e.g. your own CUDA build), it is left alone;
# otherwise torch==2.13.0 is installed (on the reference machines this resolves to a local CPU wheel).
# An unpinned `pip install torch` would pull a multi-GB CUDA build instead.

PYTHON ?= python3
TORCH_VERSION ?= 2.13.0

ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
ENV_PYTHON := python
STAMP := .ddlight-installed
else
ENV_PYTHON := .venv/bin/python
STAMP := .venv/.ddlight-installed
endif

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml
ifeq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
	test -x .venv/bin/python || $(PYTHON) -m venv .venv
endif
	$(ENV_PYTHON) -c "import torch" 2>/dev/null || $(ENV_PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(ENV_PYTHON) -m pip install -e ".[dev]"
	touch $@

demo: install
	$(ENV_PYTHON) -m ddlight fit --config configs/expert_synthetic.yaml --model.init_args.num_models 2
	$(ENV_PYTHON) -m ddlight fit --config configs/mtt_synthetic.yaml

test: install
	$(ENV_PYTHON) -m pytest

clean:
	rm -rf .venv .ddlight-installed runs experts lightning_logs wandb
