#!/usr/bin/env bash
# The GPU check, in stages. Each stage runs its commands under `timeout` and writes its results
# under $OUT as it ends, so a stage that fails or runs out of time leaves the others' results.
#   1  correctness (at most 200 s): every CUDA test (pytest -m gpu, any file: nvJPEG and the Triton
#      crop kernel against the CPU, Photometric CPU vs GPU, compiled bf16 steps, resume on CUDA,
#      ...), then the backend contract, overlap, decode and augment tests on the GPU's Python
#   2  throughput (at most 290 s): benchmarks/suite.py --profile gpu: loaders at 224 px on links
#      cycling through the carried sample (every measured batch inside one epoch), then training
#      end to end, auto (nvJPEG, overlapped) against its serial decode and pil, compiled bf16
#      against eager fp32, with the graphs torch.compile built and any it rebuilt
#   3  learning (at most 200 s): the short schedule, DINO on ResNet-18, kNN at init and after
# On the GPU machine (no network; torch, torchvision, timm and Triton there), after `make gpu-data`
# here and with gpu_data/ carried: `bash scripts/gpu_check.sh 1 2` in one call (about 520 s at
# most), then `bash scripts/gpu_check.sh 3` in a second; no argument runs every stage.
# GPU_CHECK_DRY=1: the same stages and commands with tiny sizes on the CPU (stage 1 collects the
# contract tests without running them: the default test run runs them); CI runs it (make
# gpu-check-dry), so the script cannot rot. Without gpu_data/ it takes a stand-in from ../shared.
# $OUT (default runs/gpu_check) gets at most 7 flat files, as the GPU machine returns them:
# stage<N>.log for each stage, stage2.md and stage3.md (the tables), stage2.tar.gz and
# stage3.tar.gz (CSV files, charts, each run's config and metrics; no checkpoints).
# GPU_CHECK_BUDGET (default 520): seconds this invocation may take in all, start-up included; each
# command's limit is cut to what is left, so one call of at most 540 s always ends with its files.
# Other settings: PYTHON (default python3), GPU_CHECK_DATA (default gpu_data), GPU_CHECK_WORK
# (runs, links, extracted data; default runs/gpu_check_work), SSLIGHT_DATA (default in the work folder).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
DATA_IN=${GPU_CHECK_DATA:-gpu_data}
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET:-520}))
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(1 2 3)
for stage in "${STAGES[@]}"; do
    case $stage in 1|2|3) ;; *) echo "gpu_check: stage '$stage' unknown; allowed: 1, 2, 3" >&2; exit 2 ;; esac
done
mkdir -p "${OUT:-runs/gpu_check}" "${GPU_CHECK_WORK:-runs/gpu_check_work}"
OUT_DIR=$(realpath "${OUT:-runs/gpu_check}")
WORK=$(realpath "${GPU_CHECK_WORK:-runs/gpu_check_work}")

if [ "$DRY" = 1 ]; then
    PROFILE=gpu_dry
    # one compute thread a process: on a shared 2-core machine two spin-waiting threads fight the
    # loader workers and the machine's other processes (a 0.2 s step of the tiny model took 10 s)
    export OMP_NUM_THREADS=1
    # the learning run's tiny sizes: 2 steps of 8 images, small heads, a small kNN bank
    LEARNING_SIZES=(data.limit=16 train.epochs=1 train.batch_size=8 eval.bank_limit=100 eval.query_limit=50
                    dino.out_dim=256 dino.hidden_dim=128 dino.bottleneck_dim=32)
    if [ ! -d "$DATA_IN" ]; then  # what `make gpu-data` carries, in small: 16 of the shared JPEGs
        DATA_IN=$WORK/data_in
        if [ ! -d "$DATA_IN/imagenet-sample" ]; then
            mkdir -p "$DATA_IN/tmp"
            tar -xf ../shared/datasets/imagenet-sample.tar -C "$DATA_IN/tmp" --wildcards '*.JPEG' || exit 1
            find "$DATA_IN/tmp" -type f | sort | tail -n +17 | tr '\n' '\0' | xargs -0 rm -f
            mv "$DATA_IN/tmp" "$DATA_IN/imagenet-sample"
        fi
        ln -sfn "$(realpath ../shared/datasets/cifar10-jpeg.tar.gz)" "$DATA_IN/cifar10-jpeg.tar.gz"
    fi
else
    PROFILE=gpu
    LEARNING_SIZES=()
    "$PY" -m pip install -q --no-index --find-links "$DATA_IN/wheels" -r "$DATA_IN/wheels/requirements.txt" \
        || echo "gpu_check: FAILED to install the carried wheels; the stages run all the same" >&2
fi
DATA_IN=$(realpath "$DATA_IN")
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export SSLIGHT_DATA=${SSLIGHT_DATA:-$WORK/data} SSLIGHT_CIFAR_ARCHIVE=$DATA_IN/cifar10-jpeg.tar.gz
mkdir -p "$SSLIGHT_DATA"
[ -d "$SSLIGHT_DATA/cifar10" ] || ln -sfn "$SSLIGHT_CIFAR_ARCHIVE" "$SSLIGHT_DATA/cifar10-jpeg.tar.gz"

run() {  # LIMIT COMMAND...: the command under a time limit (cut to the budget left), saying how it ended
    local limit=$1 start=$SECONDS code
    shift
    local left=$((DEADLINE - SECONDS - 15))  # 15 s: timeout's grace (-k 10) and the stage's packing
    if [ $left -lt 10 ]; then echo "gpu_check: SKIPPED, the budget is spent: $*" >&2; return 1; fi
    [ $limit -le $left ] || limit=$left
    echo "gpu_check: $* (limit ${limit}s)" >&2
    timeout -k 10 "$limit" "$@"
    code=$?
    if [ $code = 124 ] || [ $code = 137 ]; then echo "gpu_check: TIMED OUT after ${limit}s: $*" >&2
    elif [ $code != 0 ]; then echo "gpu_check: FAILED (exit $code): $*" >&2; fi
    echo "gpu_check: ended after $((SECONDS - start))s: $*" >&2
    return $code
}

pack() {  # ARCHIVE FOLDER: the folder's tables, charts, configs and metrics (no checkpoints)
    (cd "$2" && find . \( -name '*.csv' -o -name '*.png' -o -name '*.md' -o -name 'config.json' \
        -o -name 'metrics.jsonl' \) -print0 | tar -czf "$1" --null -T -)
}

environment() {
    timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
        || echo "no nvidia-smi"
    timeout 60 "$PY" -c "import torch, torchvision, timm; from sslight.augment import cpu_kernel
print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__,
      'timm', timm.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())
print('CPU photometry:', 'the fused numba kernel' if cpu_kernel() else 'the tensor ops (no numba)')"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(date -u +%Y-%m-%dT%H:%MZ); dry=$DRY"
}

stage1() {
    # and DDP's buffer sync at wrap on the GPU machine's torch (2.11, where broadcast_buffers=False
    # also skipped the initial sync), over gloo
    local contract=(tests/test_backends.py tests/test_prefetch.py tests/test_nvjpeg.py tests/test_augment.py
                    tests/test_distributed.py::test_wrap_starts_every_rank_from_rank_0s_buffers)
    local contract_mode=(-v)  # the dry run lists the contract tests (-q: one node id a line)
    [ "$DRY" = 1 ] && contract_mode=(--collect-only -q)
    local code=0
    # a test module that cannot be imported here costs its own tests, not every other file's
    local pytest=("$PY" -m pytest -p no:cacheprovider -rfEs --continue-on-collection-errors)
    # the decode, crop, resume and loss checks first; the compiled training steps (cold inductor
    # compiles) last, so they cannot crowd the others out of the time
    # -v: each result is logged as it ends, so a timed-out run still says what passed
    run 80 "${pytest[@]}" -v -m gpu tests/ --ignore=tests/test_gpu.py || code=1
    run 60 "${pytest[@]}" -v -m gpu tests/test_gpu.py || code=1
    run 60 "${pytest[@]}" "${contract_mode[@]}" "${contract[@]}" || code=1
    return $code
}

stage2() {
    local bench=$WORK/bench code=0
    rm -rf "$bench"
    run 100 "$PY" -m benchmarks.suite --profile $PROFILE --imagenet "$DATA_IN/imagenet-sample" --out "$bench/loaders" \
        --parts loaders,augment || code=1
    cat "$bench"/loaders/summary.md > "$OUT_DIR/stage2.md" 2>/dev/null
    run 190 "$PY" -m benchmarks.suite --profile $PROFILE --imagenet "$DATA_IN/imagenet-sample" --out "$bench/train" \
        --parts train || code=1
    cat "$bench"/loaders/summary.md "$bench"/train/summary.md > "$OUT_DIR/stage2.md" 2>/dev/null  # what ended
    pack "$OUT_DIR/stage2.tar.gz" "$bench"
    return $code
}

stage3() {
    local runs=$WORK/learning code=0
    rm -rf "$runs"
    mkdir -p "$runs"
    run 200 "$PY" -m benchmarks.learning --methods dino --model r18 --out "$runs" "${LEARNING_SIZES[@]}" \
        > "$OUT_DIR/stage3.md" || code=1
    cat "$OUT_DIR/stage3.md"
    pack "$OUT_DIR/stage3.tar.gz" "$runs"
    return $code
}

failed=()
for stage in "${STAGES[@]}"; do
    start=$SECONDS
    { environment; "stage$stage"; } 2>&1 | tee "$OUT_DIR/stage$stage.log"
    code=$?
    echo "gpu_check: stage $stage $([ $code = 0 ] && echo passed || echo FAILED) in $((SECONDS - start))s" \
        | tee -a "$OUT_DIR/stage$stage.log"
    [ $code = 0 ] || failed+=("$stage")
done
[ ${#failed[@]} = 0 ] || { echo "gpu_check: stage(s) ${failed[*]} failed; logs in $OUT_DIR"; exit 1; }
