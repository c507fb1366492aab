#!/usr/bin/env bash
# The GPU checks, as one script for a GPU machine with PyTorch 2.11 (cu130) but no
# Rust, no database and no network: the benchmarks of the three networks, then the
# CAMP pipeline on the full Fashion-MNIST through the real system — `camp up`
# (a coordinator on its embedded SQLite store, one worker per GPU) runs the
# pipeline file that `camp pipeline submit` sends, and `camp results` and
# `camp plot` write the table and the curve.
# Beside camp's benchmarks it runs PyTorch's own (ANCHOR, default
# ../shared/anchors/torch_anchor.py --suite: the reference-style loop and
# PyTorch at its best, eager and torch.compile) on the same GPU, and prints one
# table of both (scripts/speed-table.py); then N ResNet-20 jobs at once on the
# GPU against one (camp-worker --slots N bench).
#   usage: scripts/gpu-check.sh BIN_DIR DATA_DIR OUT_DIR
# BIN_DIR holds release camp, camp-server and camp-worker built here; DATA_DIR/fashion-mnist the IDX files.
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
# The whole step captured in a CUDA graph and replayed; each first checks that five
# replayed steps end where five eager ones do (exit 1 and the figure if not).
bench -b 512 --bf16 --channels-last --cuda-graph
bench -b 512 --bits 4 --bf16 --channels-last --cuda-graph
bench -b 512 --bits 1 --bf16 --channels-last --cuda-graph
bench -b 512 --dualpath --bf16 --channels-last --cuda-graph
# The host's floor: at batch 16 the GPU is nearly idle, so a step takes what the
# host needs to issue it. Step times close to batch 512's mean host-bound training.
bench -b 16 --bits 4 --bf16 --channels-last
bench -b 16 --dualpath --bf16 --channels-last
# Where the time goes: host ops per step, the GPU's busy time and top kernels.
profile() { echo "== profile $*"; timeout 90 "${worker[@]}" bench -a preact_resnet44_cifar --steps 20 --warmup-steps 10 --profile 5 "$@" | tee -a "$out/profile.txt"; }
[ "${BENCH:-1}" = 1 ] || profile() { :; }
profile -b 512 --bits 4 --bf16 --channels-last
profile -b 512 --dualpath --bf16 --channels-last

# PyTorch on the same GPU in the same run, then the table of both.
here=$(cd "$(dirname "$0")" && pwd)
anchor=${ANCHOR:-$here/../../shared/anchors/torch_anchor.py}
if [ "${BENCH:-1}" = 1 ] && [ -f "$anchor" ]; then
  echo "== PyTorch anchors ($anchor --suite)"
  timeout 1200 python3 "$anchor" --suite | tee "$out/anchor.jsonl"
  python3 "$here/speed-table.py" "$out/bench.jsonl" "$out/anchor.jsonl" | tee "$out/speed.md"
elif [ "${BENCH:-1}" = 1 ]; then
  echo "== no PyTorch anchors: $anchor not found (set ANCHOR)" | tee "$out/speed.md"
fi
# Small networks leave the GPU idle: N ResNet-20 jobs at once against one.
if [ "${BENCH:-1}" = 1 ]; then
  for n in 2 4; do
    echo "== $n slots"
    timeout 180 "${worker[@]}" --slots "$n" bench -a preact_resnet20_cifar -b 128 --steps 60 --warmup-steps 10 --bf16 --channels-last --cuda-graph --json \
      | tee -a "$out/slots.jsonl"
  done
fi

# 2. The pipeline: baseline, qat 4-bit, qat 1-bit, sp from qat-4, rl per alpha from sp.
# A short schedule (minutes, not the reference's 200 epochs per stage); rl gets one
# epoch, so its REINFORCE weight is raised from 0.01 to 0.1 for the gates to move.
common="arch: preact_resnet20_cifar, dataset: fashion-mnist, batch_size: 256, channels_last: true, print_freq: 100${EXTRA_SPEC:+, $EXTRA_SPEC}"
short="lr: 0.1, lr_schedule: [{epoch: 2, gamma: 0.1}]"
{
  echo "name: gpu-check"
  echo "nodes:"
  echo "  - {key: baseline, spec: {stage: baseline, epochs: 3, $short, $common}}"
  echo "  - {key: qat4, spec: {stage: qat, bits_weights: 4, bits_activations: 4, epochs: 3, $short, $common}}"
  echo "  - {key: qat1, spec: {stage: qat, bits_weights: 1, bits_activations: 1, epochs: 3, $short, $common}}"
  echo "  - {key: sp, init_from: qat4, spec: {stage: sp, epochs: 2, lr: 0.01, lr_schedule: [], $common}}"
  for alpha in ${ALPHAS:-0.01 0.05 0.1 0.2 0.5}; do
    echo "  - {key: rl-$alpha, init_from: sp, spec: {stage: rl, epochs: 1, lr: 0.01, alpha: $alpha, rl_weight: ${RL_WEIGHT:-0.1}, lr_schedule: [], $common}}"
  done
} >"$out/pipeline.yaml"
port=${CAMP_PORT:-50171}
export CAMP_ADDR="http://127.0.0.1:$port" CAMP_USER=gpu-check XDG_DATA_HOME="$out/xdg"
echo "== camp up"
"$bin/camp" up --database-url "sqlite://$out/camp.db" --data-dir "$data" --log-dir "$out" 2>"$out/up.log" &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null' EXIT
# Up once it says so (coordinator listening, workers started), or gone with its reason.
for _ in $(seq 1 600); do grep -q "camp is up" "$out/up.log" && break; kill -0 $up 2>/dev/null || { cat "$out/up.log" >&2; exit 1; }; sleep 0.1; done
cat "$out/up.log"
id=$("$bin/camp" pipeline submit "$out/pipeline.yaml" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
deadline=$(( $(date +%s) + ${PIPELINE_TIMEOUT:-900} ))
while [ "$(date +%s)" -lt "$deadline" ]; do
  "$bin/camp" pipeline show "$id" --json >"$out/experiment.json"
  python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))["jobs"]; sys.exit(0 if all(x["state"] in ("succeeded", "failed", "cancelled") for x in j) else 1)' "$out/experiment.json" && break
  sleep 5
done
"$bin/camp" pipeline show "$id" | tee "$out/pipeline.txt"
"$bin/camp" results "$id" | tee "$out/results.txt"
"$bin/camp" results "$id" --json >"$out/results.json"
"$bin/camp" plot "$id" -o "$out/curve.svg" || true
kill $up; wait $up 2>/dev/null
mkdir -p "$results"
tar -czf "$results/gpu-results.tgz" -C "$out" --exclude='*.safetensors' --exclude='camp.db*' --exclude=xdg .
