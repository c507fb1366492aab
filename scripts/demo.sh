#!/usr/bin/env bash
# Sets everything up (libtorch, Fashion-MNIST, a release build) and runs the
# main job: `camp up` starts a coordinator on its embedded store (SQLite, no
# database server) and a worker on loopback, which train a short
# pre-activation ResNet-20 baseline on real Fashion-MNIST, watched live.
#   CAMP_DEMO_EPOCHS / CAMP_DEMO_TRAIN / CAMP_DEMO_TEST / CAMP_DEMO_DEVICE tune the run.
set -euo pipefail
source "$(dirname "$0")/common.sh"
prepare_checkout

demo="$repo/.demo"
mkdir -p "$demo/data"
ln -sfn "$FASHION_MNIST_DIR" "$demo/data/fashion-mnist"

cargo build --release --bins
bin="$repo/target/release"
port="${CAMP_DEMO_PORT:-50151}"
export CAMP_ADDR="http://127.0.0.1:$port"
cpu=--cpu
[ "${CAMP_DEMO_DEVICE:-cpu}" = cpu ] || cpu=

"$bin/camp" up --database-url "sqlite://$demo/camp.db" --data-dir "$demo/data" --log-dir "$demo" --workers 1 $cpu 2>"$demo/up.log" &
up=$!
trap 'kill $up 2>/dev/null || true; wait $up 2>/dev/null || true' EXIT
# Up once it says so (coordinator listening, workers started), or gone with its reason.
for _ in $(seq 1 600); do grep -q "camp is up" "$demo/up.log" && break; kill -0 $up 2>/dev/null || { cat "$demo/up.log" >&2; exit 1; }; sleep 0.1; done
cat "$demo/up.log"

id=$("$bin/camp" submit baseline -a preact_resnet20_cifar --dataset fashion-mnist \
  --epochs "${CAMP_DEMO_EPOCHS:-3}" --train-limit "${CAMP_DEMO_TRAIN:-10000}" --test-limit "${CAMP_DEMO_TEST:-2000}" \
  -b 128 --lr 0.1 --lr-schedule 2:0.1 -p 20 --name demo-fashion-mnist --json \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
echo "submitted job $id; watching it live"
"$bin/camp" watch "$id"
"$bin/camp" show "$id"
"$bin/camp" checkpoints "$id"
echo "final test top-1: $("$bin/camp" show "$id" --json | python3 -c 'import json, sys; r = json.load(sys.stdin)["result"]; print("%.2f%% (best %.2f%% at epoch %d)" % (100 * r["final_top1"], 100 * r["best_top1"], r["best_epoch"]))')"
