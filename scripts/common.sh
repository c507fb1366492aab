# Shared by scripts/demo.sh and scripts/test.sh (sourced): libtorch, the
# Fashion-MNIST files and (for the tests) PostgreSQL, each fetched or started
# once, loudly on failure.

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  command -v apt-get >/dev/null || { echo "error: apt-get not found; install $* by hand" >&2; return 1; }
  [ -n "${CAMP_APT_UPDATED:-}" ] || { as_root apt-get update -qq >&2; CAMP_APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >&2
}

# libtorch 2.11.0 (CPU backend) from PyPI wheels into ~/.cache/camp, once.
ensure_libtorch() {
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  LIBTORCH="$("$repo/scripts/libtorch.sh")" || { echo "error: could not fetch libtorch (see above)" >&2; return 1; }
  export LIBTORCH LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# kubernetes-validate (PyPI; it carries Kubernetes' JSON schemas, so it checks
# offline) in a virtual environment under ~/.cache/camp, once; prints the program.
ensure_kubernetes_validate() {
  local venv="${CAMP_CACHE:-$HOME/.cache/camp}/kubernetes-validate-1.37.0"
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 >&2
  fi
  echo "$venv/bin/kubernetes-validate"
}

pg_reachable() {
  psql "$1" -qtAc 'SELECT 1' >/dev/null 2>&1
}

# A reachable PostgreSQL in DATABASE_URL: the one given, the local one, or one
# installed and started here. Never skipped: no database, no tests.
ensure_postgres() {
  command -v psql >/dev/null || apt_install postgresql-client
  local url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  if ! pg_reachable "$url"; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      echo "PostgreSQL not found: installing it" >&2
      apt_install postgresql
    fi
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    echo "starting PostgreSQL $version" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 1 30); do pg_reachable "$url" && break; sleep 1; done
    if ! pg_reachable "$url" && [ -z "${DATABASE_URL:-}" ]; then
      # A stock install asks for a password on TCP: give the postgres role one.
      as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >&2 || true
      url="postgres://postgres:postgres@127.0.0.1:5432/postgres"
    fi
  fi
  pg_reachable "$url" || { echo "error: PostgreSQL is not reachable at $url (set DATABASE_URL)" >&2; return 1; }
  export DATABASE_URL="$url"
}

# Debian's package dataset-fashion-mnist: the real images, 60k train / 10k test.
FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
ensure_fashion_mnist() {
  [ -f "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ] || apt_install dataset-fashion-mnist
  [ -f "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ] || { echo "error: $FASHION_MNIST_DIR is empty" >&2; return 1; }
}

# Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver):
# the real browser the dashboard's tests (e2e/tests/dashboard.rs) drive. Never
# skipped: no browser, no run.
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "Chromium or its WebDriver not found: installing chromium and chromium-driver" >&2
    apt_install --no-install-recommends chromium chromium-driver
  fi
  [ -x /usr/bin/chromium ] || { echo "error: /usr/bin/chromium is missing (install Debian's chromium)" >&2; return 1; }
  [ -x /usr/bin/chromedriver ] || { echo "error: /usr/bin/chromedriver is missing (install Debian's chromium-driver)" >&2; return 1; }
  /usr/bin/chromedriver --version >/dev/null 2>&1 || { echo "error: /usr/bin/chromedriver does not run" >&2; return 1; }
}

ensure_rust() {
  command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs) first" >&2; return 1; }
  command -v cc >/dev/null || apt_install build-essential
}

# What the demo needs, in order, from the checkout's root: no database server
# (camp runs on its embedded store); the tests add ensure_postgres.
prepare_checkout() {
  cd "$repo"
  ensure_rust
  ensure_libtorch
  ensure_fashion_mnist
}
