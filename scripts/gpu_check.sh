#!/usr/bin/env bash
# The whole GPU check in one call on the GPU machine (no network there; torch, torchvision, timm
# and Triton preinstalled): `make gpu-data` here first, then carry gpu_data/ and run
#   bash scripts/gpu_check.sh
# CUDA tests first, so a failure there still comes back (nvJPEG + Triton crop kernel, Photometric,
# compiled bf16 steps, data.loader=auto on CUDA, the prefetched decode against the serial one),
# the backend contract and overlap tests on the GPU's Python, then the GPU benchmark suite into
# $OUT/bench (or runs/bench): loaders, and the default make train (auto, overlapped) against its
# serial decode and pil, compiled bf16 against eager fp32; last, a short DINO run with its kNN gain.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_IN=gpu_data
OUT_DIR=${OUT:-runs}
python -m pip install -q --no-index --find-links "$DATA_IN/wheels" -r "$DATA_IN/wheels/requirements.txt"
export PYTHONPATH=$PWD SSLIGHT_DATA=$(mktemp -d) SSLIGHT_CIFAR_ARCHIVE=$PWD/$DATA_IN/cifar10-jpeg.tar.gz
ln -s "$PWD/$DATA_IN/cifar10-jpeg.tar.gz" "$SSLIGHT_DATA/"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_prefetch.py tests/test_backends.py tests/test_nvjpeg.py \
    tests/test_augment.py || echo "gpu_check: tests failed (exit $?); the benchmarks run all the same"
python -m benchmarks.suite --profile gpu --imagenet "$DATA_IN/imagenet-sample" --out "$OUT_DIR/bench"
# a learning point on the GPU: the short schedule (60,000 CIFAR-10 images), kNN at init and after
timeout 240 python -m benchmarks.learning --methods dino --model r18 | tee "$OUT_DIR/learning.md" \
    || echo "gpu_check: the learning run did not finish in 4 minutes (exit $?)"
