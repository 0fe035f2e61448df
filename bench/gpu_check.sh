#!/usr/bin/env bash
# A GPU check in one go (issue 19, item 4): what the device is, whether the CUDA tests pass, and
# how long one epoch of ResNet-20 takes at fp32, bf16 and fp16, each with and without --compile.
#
#     bash bench/gpu_check.sh [OUTPUT] [--overwrite]
#
# OUTPUT (default: gpu_check.txt in the current folder) receives every figure; an existing file is
# refused unless --overwrite is given. On a machine without CUDA it says so and exits 0, writing
# nothing. Each step runs under `timeout`, and the whole script keeps within BUDGET seconds (about
# 5 minutes); a step that fails or runs out of time is recorded in OUTPUT and the script goes on,
# exiting 1 at the end if any did.
set -uo pipefail

BUDGET=290           # seconds for the whole script
STARTED=$SECONDS
FAILED=0
PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --- arguments -----------------------------------------------------------------------------------
OUTPUT=""
OVERWRITE=0
for arg in "$@"; do
    case "$arg" in
        --overwrite) OVERWRITE=1 ;;
        -*) echo "gpu_check: unknown option $arg; usage: bash bench/gpu_check.sh [OUTPUT] [--overwrite]" >&2
            exit 2 ;;
        *) if [ -n "$OUTPUT" ]; then
               echo "gpu_check: give one output file, not $OUTPUT and $arg." >&2
               exit 2
           fi
           OUTPUT=$arg ;;
    esac
done
OUTPUT=${OUTPUT:-gpu_check.txt}

# --- no CUDA: nothing to check -------------------------------------------------------------------
cuda=$(cd "$ROOT" && timeout 120 "$PYTHON" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null)
if [ "$cuda" != "True" ]; then
    echo "gpu_check: no CUDA device on this machine; nothing to check"
    exit 0
fi

if [ -e "$OUTPUT" ] && [ "$OVERWRITE" -eq 0 ]; then
    echo "gpu_check: $OUTPUT exists already; give another file name or add --overwrite." >&2
    exit 2
fi
OUTPUT=$(cd "$(dirname "$OUTPUT")" && pwd)/$(basename "$OUTPUT")  # the steps run in $ROOT
: > "$OUTPUT" || { echo "gpu_check: cannot write $OUTPUT." >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT" || exit 2

# say TEXT: print TEXT and add it to the output file.
say() { echo "$*" | tee -a "$OUTPUT"; }

# step NAME CAP COMMAND...: run COMMAND for at most CAP seconds (less if the budget is nearly
# spent), its output into the file; record a failure, a timeout or a skip, and go on.
step() {
    local name=$1 cap=$2
    shift 2
    local left=$(( BUDGET - (SECONDS - STARTED) ))
    if [ "$left" -lt 10 ]; then
        say "[$name] SKIPPED: the ${BUDGET} s budget is spent"
        FAILED=1
        return 1
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    say "[$name] \$ $*"
    local begun=$SECONDS
    timeout "$cap" "$@" > "$WORK/step.log" 2>&1
    local rc=$?
    tee -a "$OUTPUT" < "$WORK/step.log"
    if [ "$rc" -eq 124 ]; then
        say "[$name] TIMED OUT after ${cap} s"
        FAILED=1
    elif [ "$rc" -ne 0 ]; then
        say "[$name] FAILED (exit $rc) after $(( SECONDS - begun )) s"
        FAILED=1
    else
        say "[$name] ok in $(( SECONDS - begun )) s"
    fi
    return "$rc"
}

say "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT"

# --- 1. the device -------------------------------------------------------------------------------
if command -v nvidia-smi > /dev/null; then
    step devices 20 nvidia-smi -L
fi
step torch 60 "$PYTHON" -c "
import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    print(f'cuda:{i}', torch.cuda.get_device_name(i), 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')
"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

# --- 2. the CUDA tests ---------------------------------------------------------------------------
# test_cuda.py is skipped without a GPU; test_training.py's device-name test (cuda:7) too, in part.
step cuda_tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/training/test_cuda.py \
    tests/training/test_training.py -k "cuda"
# Two GPUs: the NCCL test, which its skipif leaves out otherwise; selected here by name.
if [ "$GPUS" -ge 2 ]; then
    step nccl_test 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/parallel/test_distributed.py \
        -k "test_two_gpus_train_with_nccl"
else
    say "[nccl_test] not run: $GPUS CUDA device(s), the test needs two"
fi

# --- 3. one epoch of ResNet-20 at each precision, eager and compiled -----------------------------
# Random images in the official CIFAR-10 format (the tests' own writer), 45,000 training and
# 5,000 validation images as the real set, so no download is needed. main.py's epoch line gives
# the seconds of the epoch (validation included; with --compile the compilation too) and the
# training images per second.
step data 120 "$PYTHON" -c "
import sys; sys.path.insert(0, 'tests')
from cifar_files import write_cifar
write_cifar('$WORK/data', n_per_batch=10000, n_test=1000)
"
SUMMARY=()
for amp in off bf16 fp16; do
    for compiled in "" "--compile"; do
        name="epoch_${amp}${compiled:+_compile}"
        cap=45
        [ -n "$compiled" ] && cap=90
        if step "$name" "$cap" "$PYTHON" main.py --mode train --network resnet --resnet_size 3 \
            --amp "$amp" $compiled --max_epoch 1 --lr_decay_epochs --quiet --no_download \
            --device cuda --data_dir "$WORK/data" --modeldir "$WORK/$name"; then
            SUMMARY+=("$(printf '%-20s %s' "$name" "$(grep -E '^epoch +1/1' "$WORK/step.log")")")
        else
            SUMMARY+=("$(printf '%-20s %s' "$name" "no figure (see [$name] above)")")
        fi
    done
done

# --- summary -------------------------------------------------------------------------------------
say ""
say "one epoch of ResNet-20 on 45,000 images (off = fp32; seconds include validation and, with"
say "--compile, the compilation):"
for line in "${SUMMARY[@]}"; do
    say "  $line"
done
say "whole check: $(( SECONDS - STARTED )) s; $([ "$FAILED" -eq 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED')"
say "wrote $OUTPUT"
exit "$FAILED"
