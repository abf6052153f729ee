# sslight: `make train MODEL=mnv2 METHOD=dino` sets everything up on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED_CIFAR := $(wildcard ../shared/datasets/cifar10-jpeg.tar.gz)
SHARED_IMAGENET := $(wildcard ../shared/datasets/imagenet-sample.tar)
export SSLIGHT_DATA ?= $(HOME)/.cache/sslight

CONFIG ?=
MODEL ?=
METHOD ?=
RECIPE ?=
SCHEDULE ?=
LOADER ?=
DATA ?=
EPOCHS ?=
BATCH ?=
STEPS ?=
OUT ?=
RESUME ?=
SEED ?=
NPROC ?= 1
TEACHER ?=
ARGS ?=
SWEEP ?=
LINEAR ?=
CKPT ?=
TASKS ?=
EXPORT_OUT ?=
RUNS ?=
PLOT_OUT ?=
SHARDS ?=
SHARD_SIZE ?=
REENCODE ?=
PYTEST_ARGS ?=
BENCH_OUT ?= runs/bench
# DALI and TensorBoard always; FFCV where its system libraries are installed (.ci/run installs them)
FFCV_EXTRA := $(shell pkg-config --exists libturbojpeg opencv4 2>/dev/null && echo ,ffcv)
EXTRAS ?= dev,dali,tensorboard$(FFCV_EXTRA)

# The variables each target reads. One given on the make command line that none of the goals reads
# is an error before anything runs: `make sweep NPROC=4` must not quietly run on one process.
RUN_VARS := CONFIG MODEL METHOD RECIPE SCHEDULE LOADER DATA EPOCHS BATCH STEPS OUT RESUME SEED TEACHER ARGS
READS_train := $(RUN_VARS) NPROC
READS_config := $(RUN_VARS)
READS_sweep := $(RUN_VARS) SWEEP LINEAR
READS_eval := CKPT DATA TASKS ARGS
READS_export := CKPT EXPORT_OUT
READS_plot := RUNS PLOT_OUT
READS_pack := DATA SHARDS SHARD_SIZE REENCODE
READS_test := PYTEST_ARGS
READS_test-all := PYTEST_ARGS
READS_gpu-check-dry := PYTEST_ARGS
READS_bench := BENCH_OUT
READS_bench-gpu := BENCH_OUT
COMMAND_VARS := $(sort $(foreach target,train sweep eval export plot pack test bench,$(READS_$(target))))
GIVEN := $(foreach var,$(COMMAND_VARS),$(if $(filter command line,$(origin $(var))),$(var)))
READ := $(sort $(foreach goal,$(MAKECMDGOALS),$(READS_$(goal))))
UNREAD := $(filter-out $(READ),$(GIVEN))
ifneq ($(UNREAD),)
$(error $(firstword $(UNREAD)) is not read by 'make $(or $(MAKECMDGOALS),install)'; $(if $(READ),it reads $(READ),it reads none of the command variables))
endif

# The commands name Make variables (CKPT=, MODEL=) in their messages, not their flags
COMMAND := SSLIGHT_VIA_MAKE=1

.PHONY: install data-link bench-data gpu-data gpu-check-dry train config sweep eval export plot pack test test-all bench \
	bench-gpu clean

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

# The ImageNet-sized JPEG sample the loader benchmarks read, unpacked once into the data dir.
bench-data: data-link
	@if [ -n "$(SHARED_IMAGENET)" ] && [ ! -d "$(SSLIGHT_DATA)/imagenet-sample" ]; then \
		mkdir -p "$(SSLIGHT_DATA)/imagenet-sample.tmp" && \
		tar -xf "$(SHARED_IMAGENET)" -C "$(SSLIGHT_DATA)/imagenet-sample.tmp" && \
		mv "$(SSLIGHT_DATA)/imagenet-sample.tmp" "$(SSLIGHT_DATA)/imagenet-sample"; fi

# NPROC > 1: that many processes on this machine through torchrun (DDP; gloo on CPU, NCCL on CUDA)
LAUNCH = $(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC),$(PY))

train: install data-link
	$(COMMAND) $(LAUNCH) -m sslight train --config "$(CONFIG)" --model "$(MODEL)" --method "$(METHOD)" \
		--recipe "$(RECIPE)" --schedule "$(SCHEDULE)" --loader "$(LOADER)" --data "$(DATA)" --epochs "$(EPOCHS)" \
		--batch "$(BATCH)" --steps "$(STEPS)" --out "$(OUT)" --resume "$(RESUME)" --seed "$(SEED)" \
		--teacher "$(TEACHER)" $(ARGS)

# the config `make train` with these variables would resolve here, printed; nothing runs
config: install
	@$(COMMAND) $(PY) -m sslight config --config "$(CONFIG)" --model "$(MODEL)" --method "$(METHOD)" \
		--recipe "$(RECIPE)" --schedule "$(SCHEDULE)" --loader "$(LOADER)" --data "$(DATA)" --epochs "$(EPOCHS)" \
		--batch "$(BATCH)" --steps "$(STEPS)" --out "$(OUT)" --resume "$(RESUME)" --seed "$(SEED)" \
		--teacher "$(TEACHER)" $(ARGS)

# OUT is the sweep's folder (default runs/sweep); RESUME=auto resumes interrupted runs
sweep: install data-link
	$(COMMAND) $(PY) -m sslight sweep --sweep "$(SWEEP)" --config "$(CONFIG)" --model "$(MODEL)" \
		--method "$(METHOD)" --recipe "$(RECIPE)" --schedule "$(SCHEDULE)" --loader "$(LOADER)" --data "$(DATA)" \
		--epochs "$(EPOCHS)" --batch "$(BATCH)" --steps "$(STEPS)" --out "$(OUT)" --resume "$(RESUME)" \
		--seed "$(SEED)" --teacher "$(TEACHER)" --linear "$(LINEAR)" $(ARGS)

# CKPT: a checkpoint file or a run folder (its newest checkpoint); results beside it
eval: install data-link
	$(COMMAND) $(PY) -m sslight eval --ckpt "$(CKPT)" --data "$(DATA)" --tasks "$(TASKS)" $(ARGS)

export: install
	$(COMMAND) $(PY) -m sslight export --ckpt "$(CKPT)" --out "$(EXPORT_OUT)"

# RUNS: one run folder or several (overlaid); PLOT_OUT: the PNG (default RUN/curves.png for one run)
plot: install
	$(if $(strip $(RUNS)),,$(error RUNS is empty: give run folders, e.g. make plot RUNS="runs/a runs/b"))
	$(COMMAND) $(PY) -m sslight plot $(RUNS) --out "$(PLOT_OUT)"

# DATA (a folder, or empty: CIFAR-10) into tar shards in SHARDS, each about SHARD_SIZE (default 256MB);
# REENCODE=Q makes every image a JPEG of quality Q. The same command again resumes an interrupted pack.
pack: install data-link
	$(if $(strip $(SHARDS)),,$(error SHARDS is empty: give the shards' folder, e.g. make pack DATA=/data/imagenet SHARDS=/data/imagenet-shards))
	$(COMMAND) $(PY) -m sslight pack "$(DATA)" "$(SHARDS)" --shard-size "$(SHARD_SIZE)" --reencode "$(REENCODE)"

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

# scripts/gpu_check.sh's dry run (GPU_CHECK_DRY=1: its stages with tiny sizes on the CPU), as CI runs it
gpu-check-dry: install
	$(PY) -m pytest -q -m slow tests/test_gpu_check.py $(PYTEST_ARGS)

# CPU suite (about 11 minutes here): tables on stdout; CSV, PNG and summary.md in BENCH_OUT
bench: install bench-data
	$(PY) -m benchmarks.suite --profile cpu --out "$(BENCH_OUT)"

# GPU suite, one command on one GPU machine
bench-gpu: install bench-data
	$(PY) -m benchmarks.suite --profile gpu --out "$(BENCH_OUT)"

# What the GPU machine needs beside the repo, under the 64 MiB that travel there (the working tree
# counts too): the CIFAR-10 archive, GPU_SAMPLE ImageNet-sized JPEGs (the benchmarks measure on
# links cycling through them) and wheels of what the GPU check imports beyond torch, torchvision,
# timm and Triton; not numba (its llvmlite alone is about 40 MB): without it the CPU runs the
# photometric tensor ops. Then, there: bash scripts/gpu_check.sh 1 2, and bash scripts/gpu_check.sh 3
GPU_SAMPLE := 200
GPU_WHEELS := simplejpeg rich markdown-it-py mdurl pygments pytest iniconfig pluggy packaging matplotlib contourpy \
	cycler fonttools kiwisolver pyparsing python-dateutil six tzdata pyyaml
gpu-data: install
	rm -rf gpu_data && mkdir -p gpu_data/wheels gpu_data/imagenet-sample
	cp "$(realpath $(SHARED_CIFAR))" gpu_data/
	tar -xf "$(SHARED_IMAGENET)" -C gpu_data/imagenet-sample --wildcards '*.JPEG'
	find gpu_data/imagenet-sample -type f | sort | tail -n +$$(($(GPU_SAMPLE) + 1)) | tr '\n' '\0' | xargs -0 rm -f
	$(PY) -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--no-deps -d gpu_data/wheels $(GPU_WHEELS)
	printf '%s\n' $(GPU_WHEELS) > gpu_data/wheels/requirements.txt
	@data=$$(du -sb gpu_data | cut -f1); \
	tree=$$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $$1} END {print s}'); \
	echo "gpu_data: $$((data >> 20)) MiB; with the working tree $$(((data + tree) >> 20)) MiB of the 64 MiB that travel"; \
	[ $$((data + tree)) -lt $$((64 << 20)) ] || { echo "gpu-data: over the 64 MiB that travel to the GPU machine"; exit 1; }

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
