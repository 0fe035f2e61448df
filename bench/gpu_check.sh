#!/usr/bin/env bash
# A GPU check in one go (issue 19 item 4, issue 24 item 14): what the device is, whether the CUDA
# tests pass, and whether the new paths run on it: a --recipe speed run fitted to one minute and its
# six-view test, one frozen ResNet-50 epoch on a weights file made here, fp16 with the loss scaler
# (and the whitening bias's rate-0 group), --compile with airbench, and one epoch of ResNet-20 at
# fp32, bf16 and fp16. It ends with one markdown table for BENCHMARKS.md.
#
#     bash bench/gpu_check.sh [OUTPUT] [--overwrite]
#
# OUTPUT (default: gpu_check.txt in the current folder) receives every step's output and the
# table; its folder must exist, and an existing file is refused unless --overwrite is given. On a
# machine without CUDA it says so and exits 0, writing nothing. Each step runs under `timeout`, and
# the whole script keeps within BUDGET seconds (about 5 minutes); a step that fails, runs out of
# time or is skipped for the budget is recorded in OUTPUT and the table, and the script goes on,
# exiting 1 at the end if any did. --compile is checked on airbench only (not on each ResNet-20
# precision) to fit the budget.
#
# GPU_CHECK_DEVICE=cpu is for tests/test_bench.py: every step on the CPU with a tiny data set and
# budget, so that the commands are known to parse and run where no GPU is.
set -uo pipefail

BUDGET=290           # seconds for the whole script
STARTED=$SECONDS
FAILED=0
PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
USAGE="usage: bash bench/gpu_check.sh [OUTPUT] [--overwrite]"

# --- arguments -----------------------------------------------------------------------------------
OUTPUT=""
OVERWRITE=0
for arg in "$@"; do
    case "$arg" in
        --overwrite) OVERWRITE=1 ;;
        -*) echo "gpu_check: unknown option $arg; $USAGE" >&2
            exit 2 ;;
        *) if [ -n "$OUTPUT" ]; then
               echo "gpu_check: give one OUTPUT file, not $OUTPUT and $arg." >&2
               exit 2
           fi
           OUTPUT=$arg ;;
    esac
done
OUTPUT=${OUTPUT:-gpu_check.txt}
# Refused before anything runs, on any machine: a missing folder would otherwise resolve to a
# file in / (issue 24, item 13).
if [ ! -d "$(dirname -- "$OUTPUT")" ]; then
    echo "gpu_check: the folder of OUTPUT $OUTPUT does not exist; create it or give a file in an existing folder." >&2
    exit 2
fi
if [ -d "$OUTPUT" ]; then
    echo "gpu_check: OUTPUT $OUTPUT is a folder; give a file name such as $OUTPUT/gpu_check.txt." >&2
    exit 2
fi
if [ -e "$OUTPUT" ] && [ "$OVERWRITE" -eq 0 ]; then
    echo "gpu_check: OUTPUT $OUTPUT exists already; give another file name or add --overwrite." >&2
    exit 2
fi

case "${GPU_CHECK_DEVICE:-cuda}" in
    cuda)
        DEVICE=cuda
        PER_BATCH=10000    # images per training file: 45,000 training and 5,000 validation
        N_TEST=10000
        SPEED_MINUTES=1
        TINY=()            # every main.py default as it is
        NARROW=()
        AUTO_AMP=()        # --amp auto: bf16 where the GPU has it, else fp16
        PYTEST=()          # run the CUDA tests
        ;;
    cpu)
        DEVICE=cpu
        PER_BATCH=8        # 32 training and 8 validation images, two steps an epoch
        N_TEST=16
        SPEED_MINUTES=0.4  # a loaded CPU takes some 15 s to start and choose the width
        TINY=(--split_index 32 --batch_size 16 --eval_batch_size 64)
        NARROW=(--width_scale 0.25)  # the airbench runs of a fixed width
        AUTO_AMP=(--amp bf16)        # what auto gives on a recent GPU, without a CPU's timing
        PYTEST=(--collect-only)      # the CUDA tests skip here: check that they are found
        ;;
    *) echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, not ${GPU_CHECK_DEVICE}; leave it unset on a GPU machine." >&2
       exit 2 ;;
esac

# --- no CUDA: nothing to check -------------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
    cuda=$(cd "$ROOT" && timeout 120 "$PYTHON" -c "import torch; print(torch.cuda.is_available())" 2>/dev/null)
    if [ "$cuda" != "True" ]; then
        echo "gpu_check: no CUDA device on this machine; nothing to check"
        exit 0
    fi
fi

folder=$(cd "$(dirname -- "$OUTPUT")" && pwd) || exit 2
OUTPUT=$folder/$(basename -- "$OUTPUT")  # an absolute path: the steps run in $ROOT
: > "$OUTPUT" || { echo "gpu_check: cannot write OUTPUT $OUTPUT; give a file in a folder you can write to." >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT" || exit 2

# say TEXT: print TEXT and add it to the output file.
say() { echo "$*" | tee -a "$OUTPUT"; }

# The table: one row per step, | step | what it ran | seconds | figure | result |.
ROWS=()
add_row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 |"); }

# step NAME CAP WHAT FIGURE COMMAND...: run COMMAND for at most CAP seconds (less if the budget is
# nearly spent), its output into the file; add the step's row to the table, its figure from the
# function FIGURE (which reads the step's output, $WORK/step.log) when it succeeded; record a
# failure, a timeout or a skip, and go on.
step() {
    local name=$1 cap=$2 what=$3 figure=$4
    shift 4
    local left=$(( BUDGET - (SECONDS - STARTED) ))
    if [ "$left" -lt 10 ]; then
        say "[$name] SKIPPED: the ${BUDGET} s budget is spent"
        add_row "$name" "$what" 0 "" "skipped: budget spent"
        FAILED=1
        return 1
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    say "[$name] \$ $*"
    local begun=$SECONDS rc result figures=""
    timeout -k 10 "$cap" "$@" > "$WORK/step.log" 2>&1  # killed 10 s after a SIGTERM it ignores
    rc=$?
    tee -a "$OUTPUT" < "$WORK/step.log"
    if [ "$rc" -eq 0 ]; then
        result=ok
        figures=$("$figure" 2>/dev/null)
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        result="timed out after $cap s"
        FAILED=1
    else
        result="failed (exit $rc)"
        FAILED=1
    fi
    say "[$name] $result in $(( SECONDS - begun )) s"
    add_row "$name" "$what" "$(( SECONDS - begun ))" "${figures:-n/a}" "$result"
    return "$rc"
}

# --- figures: each reads the step's output ------------------------------------------------------
last_line() { grep -v '^\s*$' "$WORK/step.log" | tail -n 1 | tr -d '=' | sed -E 's/^ +| +$//g'; }
device_figure() { grep -E '^(torch|cuda:)' "$WORK/step.log" | paste -sd ';' | sed 's/;/; /g'; }
data_figure() { echo "$(( 5 * PER_BATCH )) training and validation, $N_TEST test images"; }
# "2 epochs: 41.2 s, last 3.1 s, 14212 img/s" from main.py's epoch lines: the first epoch's
# seconds, the last one's and its training images per second.
epochs_figure() {
    sed -nE 's/^epoch +[0-9]+\/[0-9]+ .* ([0-9.]+) s +([0-9]+) img\/s$/\1 \2/p' "$WORK/step.log" |
        awk '{ n++; if (n == 1) first = $1; last = $1; rate = $2 }
             END { if (n == 1) printf "1 epoch: %s s, %s img/s", first, rate
                   else if (n > 1) printf "%d epochs: %s s, last %s s, %s img/s", n, first, last, rate }'
}
# the speed run: the width and epochs it chose (its config.json), then its epochs
speed_figure() {
    "$PYTHON" -c "
import json, sys
c = json.load(open(sys.argv[1]))['config']
print(f\"width {c['width_scale']:g}, {c['max_epoch'] - 1 + c['final_epoch_share']:.2f} epochs planned\", end='; ')
" "$WORK/speed/config.json"
    epochs_figure
}
# --mode test: the accuracy in the row below the table's header
test_figure() {
    awk 'found { printf "test acc %s (six-view TTA)", $3; exit } /^checkpoint +epoch +test acc/ { found = 1 }' \
        "$WORK/step.log"
}

say "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT on $DEVICE"

# --- 1. the device and the CUDA tests ------------------------------------------------------------
if command -v nvidia-smi > /dev/null; then
    say "$(timeout 20 nvidia-smi -L 2>&1)"
fi
step device 60 "torch, CUDA and cuDNN versions; the devices" device_figure "$PYTHON" -c "
import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    print(f'cuda:{i}', torch.cuda.get_device_name(i), 'bf16' if torch.cuda.is_bf16_supported() else 'no bf16')
print('devices', torch.cuda.device_count())
"
GPUS=$(sed -n 's/^devices //p' "$WORK/step.log")
[[ "$GPUS" =~ ^[0-9]+$ ]] || GPUS=0
GPU_NAME=$(sed -nE 's/^cuda:0 (.*) (bf16|no bf16)$/\1/p' "$WORK/step.log")

# test_cuda.py is skipped without a GPU; test_training.py's device-name test (cuda:7) too, in part.
step cuda_tests 90 "\`pytest tests/training/test_cuda.py tests/training/test_training.py -k cuda\`" \
    last_line "$PYTHON" -m pytest -p no:cacheprovider "${PYTEST[@]}" tests/training/test_cuda.py \
    tests/training/test_training.py -k "cuda"
# Two GPUs: the NCCL test, which its skipif leaves out otherwise; selected here by name.
NCCL_WHAT="\`pytest tests/parallel/test_distributed.py -k test_two_gpus_train_with_nccl\`"
if [ "$GPUS" -ge 2 ]; then
    step nccl_test 120 "$NCCL_WHAT" last_line "$PYTHON" -m pytest -p no:cacheprovider "${PYTEST[@]}" \
        tests/parallel/test_distributed.py -k "test_two_gpus_train_with_nccl"
else
    say "[nccl_test] not run: $GPUS CUDA device(s), the test needs two"
    add_row nccl_test "$NCCL_WHAT" 0 "$GPUS CUDA device(s), the test needs two" "not run"
fi

# --- 2. data and weights -------------------------------------------------------------------------
# Random images in the official CIFAR-10 format (the tests' own writer), as many as the real set,
# so no download is needed; each class has its own colours, so a run's accuracy means something.
step data 60 "random CIFAR-10 files in the official format (\`tests/cifar_files.py\`)" data_figure \
    "$PYTHON" -c "
import sys; sys.path.insert(0, 'tests')
from cifar_files import write_cifar
write_cifar('$WORK/data', n_per_batch=$PER_BATCH, n_test=$N_TEST)
"
# torchvision's ResNet-50 state_dict, as --pretrained_file reads it; its weights are random, so
# its batch-norm statistics are set from random images first: frozen, the backbone then gives
# features of a sane size rather than ones that grow through the 50 layers.
step weights 60 "torchvision's resnet50 state_dict saved with \`torch.save\` (random weights)" \
    last_line "$PYTHON" -c "
import torch, torchvision
net = torchvision.models.resnet50()
for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = None  # a plain average over the batches below
with torch.no_grad():
    net.train()(torch.randn(16, 3, 32, 32))
torch.save(net.state_dict(), '$WORK/resnet50.pth')
print(f'{sum(p.numel() for p in net.parameters()):,} parameters')
"

# --- 3. the speed recipe, transfer, fp16, --compile ----------------------------------------------
COMMON=(--quiet --no_download --device "$DEVICE" --data_dir "$WORK/data" "${TINY[@]}")
step speed_train 100 "\`--recipe speed --budget_minutes $SPEED_MINUTES\`" speed_figure \
    "$PYTHON" main.py --mode train --recipe speed --budget_minutes "$SPEED_MINUTES" "${AUTO_AMP[@]}" \
    "${COMMON[@]}" \
    --modeldir "$WORK/speed"
step speed_test 45 "\`--mode test --tta six\` of that run" test_figure \
    "$PYTHON" main.py --mode test --tta six "${COMMON[@]}" --modeldir "$WORK/speed"
step resnet50_frozen 60 "\`--recipe transfer --pretrained_file FILE --input_size 32 --freeze_epochs 1 --max_epoch 1\`" \
    epochs_figure "$PYTHON" main.py --mode train --recipe transfer --network resnet50 \
    --pretrained imagenet --pretrained_file "$WORK/resnet50.pth" --input_size 32 --freeze_epochs 1 \
    --max_epoch 1 "${AUTO_AMP[@]}" "${COMMON[@]}" --modeldir "$WORK/resnet50"
# fp16 through the loss scaler, with the whitening bias's group at rate 0 after 30% of the steps;
# its checkpoint shows whether the scaler acted and the group stopped.
step airbench_fp16 45 "\`--recipe speed --amp fp16 --max_epoch 1\` (whitening bias at rate 0 after 30%)" \
    epochs_figure "$PYTHON" main.py --mode train --recipe speed --amp fp16 --max_epoch 1 \
    "${NARROW[@]}" "${COMMON[@]}" --modeldir "$WORK/fp16"
step fp16_state 30 "that run's checkpoint: the loss scaler's scale, a group at rate 0" last_line \
    "$PYTHON" -c "
import sys, torch
saved = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
scale = saved['scaler'].get('scale')
rates = [group['lr'] for group in saved['optimizer']['param_groups']]
assert scale, 'the loss scaler was off: no scale in the checkpoint'
assert 0 in rates, f'no parameter group at rate 0: {rates}'
print(f'loss scale {scale:g}; {rates.count(0)} of {len(rates)} groups at rate 0')
" "$WORK/fp16/model-1.ckpt"
step airbench_compile 90 "\`--recipe speed --compile --max_epoch 2\` (epoch 1 includes compiling)" \
    epochs_figure "$PYTHON" main.py --mode train --recipe speed --compile --max_epoch 2 \
    "${NARROW[@]}" "${AUTO_AMP[@]}" "${COMMON[@]}" --modeldir "$WORK/compile"

# --- 4. one epoch of ResNet-20 at each precision -------------------------------------------------
# main.py's epoch line gives the seconds of the epoch (validation included) and the training
# images per second.
for amp in off bf16 fp16; do
    step "resnet20_$amp" 40 "\`--network resnet --resnet_size 3 --amp $amp --max_epoch 1\`" \
        epochs_figure "$PYTHON" main.py --mode train --network resnet --resnet_size 3 --amp "$amp" \
        --max_epoch 1 --lr_decay_epochs "${COMMON[@]}" --modeldir "$WORK/resnet20_$amp"
done

# --- the table -----------------------------------------------------------------------------------
say ""
say "gpu_check on ${GPU_NAME:-the CPU}, $(date -u +%Y-%m-%d): $(( 5 * PER_BATCH )) random training and validation images, $N_TEST test images; the whole check $(( SECONDS - STARTED )) s of its ${BUDGET} s; $([ "$FAILED" -eq 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED')."
say ""
say "| step | what it ran | seconds | figure | result |"
say "|---|---|---|---|---|"
for line in "${ROWS[@]}"; do
    say "$line"
done
say ""
say "wrote $OUTPUT"
exit "$FAILED"
