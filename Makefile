# sslight: `make train MODEL=mnv2 METHOD=dino` sets everything up on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_CIFAR := $(wildcard ../shared/datasets/cifar10-jpeg.tar.gz)
export SSLIGHT_DATA ?= $(HOME)/.cache/sslight

MODEL ?=
METHOD ?=
RECIPE ?=
LOADER ?=
DATA ?=
EPOCHS ?=
BATCH ?=
STEPS ?=
OUT ?=
RESUME ?=
SEED ?=
TEACHER ?=
ARGS ?=
PYTEST_ARGS ?=
# DALI always; FFCV where its system libraries are installed (.ci/run installs them)
FFCV_EXTRA := $(shell pkg-config --exists libturbojpeg opencv4 2>/dev/null && echo ,ffcv)
EXTRAS ?= dev,dali$(FFCV_EXTRA)

.PHONY: install data-link train test test-all clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch and torchvision first and pinned: this machine serves these releases from local disk
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

# The shared CIFAR-10 archive, where there is one beside the project, seeds the data dir.
data-link:
	@mkdir -p "$(SSLIGHT_DATA)"
	@if [ -n "$(SHARED_CIFAR)" ] && [ ! -e "$(SSLIGHT_DATA)/cifar10-jpeg.tar.gz" ]; then \
		ln -s "$(realpath $(SHARED_CIFAR))" "$(SSLIGHT_DATA)/cifar10-jpeg.tar.gz"; fi

train: install data-link
	$(PY) -m sslight train --model "$(MODEL)" --method "$(METHOD)" --recipe "$(RECIPE)" \
		--loader "$(LOADER)" --data "$(DATA)" --epochs "$(EPOCHS)" --batch "$(BATCH)" \
		--steps "$(STEPS)" --out "$(OUT)" --resume "$(RESUME)" --seed "$(SEED)" \
		--teacher "$(TEACHER)" $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
