#!/usr/bin/env bash
# Runs every test: coordinator, worker engine, CLI and the end-to-end system
# tests, against a real PostgreSQL (one fresh database per test).
set -euo pipefail
source "$(dirname "$0")/common.sh"
prepare_checkout
ensure_postgres
ensure_chromium
echo "libtorch: $LIBTORCH" >&2
echo "database: $DATABASE_URL" >&2
echo "browser: $(/usr/bin/chromium --version 2>/dev/null), $(/usr/bin/chromedriver --version)" >&2
# Tests run two at a time on two cores, each libtorch with one thread (the tests
# set it): OpenMP threads must not spin-wait for cores that other tests hold.
export OMP_WAIT_POLICY=PASSIVE
# One style, enforced: the formatting (rustfmt.toml) and clippy's lints, as errors.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Each crate's modules import one another without circles.
python3 scripts/import-cycles.py
# The Kubernetes manifests against Kubernetes' schemas (KEDA's kinds have none
# there: e2e/tests/deploy_manifests.rs checks those, and everything else it can).
"$(ensure_kubernetes_validate)" --strict --quiet "$repo"/deploy/k8s/*.yaml
# The system tests start the binaries as processes: build them first.
cargo build --workspace --bins --tests
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
