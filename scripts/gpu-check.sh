#!/usr/bin/env bash
# The GPU checks, as one script for a GPU machine with PyTorch 2.11 (cu130) but no
# Rust, no database and no network: the benchmarks of the three networks, then the
# CAMP pipeline on the full Fashion-MNIST with `camp-worker run` chained stage by
# stage (each stage starting from its parent's best checkpoint file).
#   usage: scripts/gpu-check.sh BIN_DIR DATA_DIR OUT_DIR
# BIN_DIR holds a release camp-worker built here; DATA_DIR/fashion-mnist the IDX files.
# Everything but the checkpoints ends up in OUT_DIR/gpu-results.tgz.
set -uo pipefail
bin=$1 data=$2 results=$3
out=$(mktemp -d)
torch_lib=${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
worker=("$bin/camp-worker" --device "${DEVICE:-cuda}" --data-dir "$data")
mkdir -p "$out"
nvidia-smi -L 2>&1 | tee "$out/gpu.txt"

# 1. Training images/s, preact_resnet44_cifar on random data already on the GPU.
bench() { echo "== bench $*"; timeout 90 "${worker[@]}" bench -a preact_resnet44_cifar --steps 30 --warmup-steps 10 --json "$@" | tee -a "$out/bench.jsonl"; }
[ "${BENCH:-1}" = 1 ] || bench() { :; }
bench -b 128
bench -b 512 --channels-last
bench -b 512 --bf16 --channels-last
bench -b 128 --bits 4
bench -b 512 --bits 4 --bf16 --channels-last
bench -b 512 --bits 1 --bf16 --channels-last
bench -b 128 --dualpath
bench -b 512 --dualpath --bf16 --channels-last
# The host's floor: at batch 16 the GPU is nearly idle, so a step takes what the
# host needs to issue it. Step times close to batch 512's mean host-bound training.
bench -b 16 --bits 4 --bf16 --channels-last
bench -b 16 --dualpath --bf16 --channels-last
# Where the time goes: host ops per step, the GPU's busy time and top kernels.
profile() { echo "== profile $*"; timeout 90 "${worker[@]}" bench -a preact_resnet44_cifar --steps 20 --warmup-steps 10 --profile 5 "$@" | tee -a "$out/profile.txt"; }
[ "${BENCH:-1}" = 1 ] || profile() { :; }
profile -b 512 --bits 4 --bf16 --channels-last
profile -b 512 --dualpath --bf16 --channels-last

# 2. The pipeline: baseline, qat 4-bit, qat 1-bit, sp from qat-4, rl per alpha from sp.
# A short schedule (minutes, not the reference's 200 epochs per stage); rl gets one
# epoch, so its REINFORCE weight is raised from 0.01 to 0.1 for the gates to move.
common="arch: preact_resnet20_cifar
dataset: fashion-mnist
batch_size: 256
channels_last: true
print_freq: 100
${EXTRA_SPEC:-}"
stage() { # name, init (or ""), yaml body
  local name=$1 init=$2 body=$3
  printf '%s\n%s\n' "$common" "$body" >"$out/$name.yaml"
  echo "== $name"
  local args=(run --spec "$out/$name.yaml" --out "$out/$name")
  [ -n "$init" ] && args+=(--init "$out/$init/best.safetensors")
  timeout "${STAGE_TIMEOUT:-150}" "${worker[@]}" "${args[@]}" >"$out/$name.log" 2>&1 || { echo "$name failed:"; tail -5 "$out/$name.log"; }
  tail -2 "$out/$name.log"
  cp "$out/$name/summary.json" "$out/$name.summary.json" 2>/dev/null
  rm -f "$out/$name"/latest.safetensors
}
stage baseline "" "stage: baseline
epochs: 3
lr: 0.1
lr_schedule: [{epoch: 2, gamma: 0.1}]"
stage qat4 "" "stage: qat
bits_weights: 4
bits_activations: 4
epochs: 3
lr: 0.1
lr_schedule: [{epoch: 2, gamma: 0.1}]"
stage qat1 "" "stage: qat
bits_weights: 1
bits_activations: 1
epochs: 3
lr: 0.1
lr_schedule: [{epoch: 2, gamma: 0.1}]"
stage sp qat4 "stage: sp
epochs: 2
lr: 0.01
lr_schedule: []"
for alpha in ${ALPHAS:-0.01 0.05 0.1 0.2 0.5}; do
  stage "rl-$alpha" sp "stage: rl
epochs: 1
lr: 0.01
alpha: $alpha
rl_weight: ${RL_WEIGHT:-0.1}
lr_schedule: []"
done
mkdir -p "$results"
tar -czf "$results/gpu-results.tgz" -C "$out" --exclude='*.safetensors' .
for f in "$out"/*.summary.json; do echo "$(basename "$f" .summary.json) $(cat "$f")"; done
