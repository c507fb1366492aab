#!/usr/bin/env bash
# The lab-scale load benchmark (issue 12's table): starts a coordinator of its
# own on a fresh PostgreSQL database (or SQLite with --sqlite), runs camp-bench
# against it on loopback, prints the rows, and cleans up. Extra arguments go
# to camp-bench (e.g. --only claims --jobs 5000; --only dashboard for the
# dashboard's pages with 10,000 jobs and a 1,000,000-point series).
#
#   bash scripts/bench-load.sh [--sqlite] [camp-bench flags]
#   CAMP_SERVER_BIN=/path/to/camp-server bash scripts/bench-load.sh   (measure another build)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$repo"
backend=postgres
if [ "${1:-}" = "--sqlite" ]; then backend=sqlite; shift; fi
cargo build --release --locked -p camp-server -p camp-bench >&2
server="${CAMP_SERVER_BIN:-$repo/target/release/camp-server}"
bench="${CAMP_BENCH_BIN:-$repo/target/release/camp-bench}"
work="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
db="camp_bench_$$"
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ "$backend" = postgres ] && psql "$admin_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
bench_db=()
if [ "$backend" = postgres ]; then
  ensure_postgres
  admin_url="$DATABASE_URL"
  psql "$admin_url" -qc "CREATE DATABASE $db" >/dev/null
  url="${admin_url%/*}/$db"
  bench_db=(--database-url "$url")
else
  url="sqlite://$work/camp.db"
fi
# 1,000 long-polling workers need file descriptors and connections beyond the defaults.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
metrics_port=$((port + 1))
metrics=()
if "$server" --help | grep -q -- --metrics-listen; then
  metrics=(--metrics-listen "127.0.0.1:$metrics_port")
  bench_db+=(--metrics-url "http://127.0.0.1:$metrics_port/metrics")
fi
# The dashboard's row (--only dashboard) reads the coordinator's web pages.
web=()
if "$server" --help | grep -q -- --http-listen; then
  web=(--http-listen "127.0.0.1:$((port + 2))")
  bench_db+=(--dashboard-url "http://127.0.0.1:$((port + 2))")
fi
"$server" --listen "127.0.0.1:$port" --database-url "$url" "${metrics[@]}" "${web[@]}" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
echo "backend: $backend; coordinator: $server" >&2
"$bench" --addr "127.0.0.1:$port" "${bench_db[@]}" "$@"
