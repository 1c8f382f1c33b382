# shellcheck shell=bash
# Functions of .ci/run (sourced; kept apart so that tests/test_ops_ci.py can run them alone).
# Installing system packages needs root: as root they run directly, otherwise through `sudo -n` (never a
# password prompt in CI) when that works, otherwise they fail with a message that says what to do.

# True when commands can be run as root (we are root, or password-less sudo works).
can_be_root() {
  [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

# as_root CMD ARGS...: run CMD as root (directly or through `sudo -n`); 126 with nothing run when impossible.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif can_be_root; then
    sudo -n "$@"
  else
    return 126
  fi
}

# apt_install PACKAGE...: Debian packages, non-interactively, without recommended extras.
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 127
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# redis_ping URL: true when a Redis answers there (through the active Python's redis-py: redis-cli may be absent).
redis_ping() {
  python -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1, socket_timeout=2).ping()' \
    "$1" >/dev/null 2>&1
}

# ensure_redis URL: make sure a Redis answers at URL; when none does and URL is on this machine's loopback,
# start a throw-away one there (installing redis-server first if needed). Non-zero, with a message, otherwise.
ensure_redis() {
  local url=$1 hostport host port
  redis_ping "$url" && return 0
  hostport=$(python -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p.hostname or "", p.port or 6379)' "$url")
  host=${hostport% *}
  port=${hostport#* }
  case "$host" in
    127.0.0.1|localhost) ;;
    *) echo "ci: no Redis answers at REDIS_URL=$url, and it is not on this machine: start it, or unset REDIS_URL" >&2
       return 1 ;;
  esac
  if ! command -v redis-server >/dev/null 2>&1; then
    if ! can_be_root; then
      echo "ci: no Redis answers at $url and redis-server is not installed. Installing it (apt-get install" \
        "redis-server) needs root: run .ci/run as root or with password-less sudo, install redis-server yourself," \
        "or point REDIS_URL at a running Redis." >&2
      return 1
    fi
    if ! apt_install redis-server; then
      echo "ci: could not install redis-server with apt-get; install it yourself or point REDIS_URL at a running Redis" >&2
      return 1
    fi
  fi
  local log=${TMPDIR:-/tmp}/mrdib-ci-redis-$port.log
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$(mktemp -d)" --logfile "$log"
  for _ in $(seq 50); do
    redis_ping "$url" && return 0
    sleep 0.1
  done
  echo "ci: started redis-server on port $port, but it does not answer at $url (its log: $log)" >&2
  return 1
}

# ensure_redis_tools: redis-server and redis-cli on PATH, for the tests that start their own servers and the Redis
# Cluster (3 masters joined with `redis-cli --cluster create`), whether or not a Redis already answers. Installs the
# Debian package redis-server (which brings redis-tools) when one is missing; non-zero with a message otherwise.
ensure_redis_tools() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return 0
  fi
  if ! can_be_root; then
    echo "ci: redis-server / redis-cli are not installed, and the Redis Cluster tests need them. Installing them" \
      "(apt-get install redis-server) needs root: run .ci/run as root or with password-less sudo, or install" \
      "redis-server yourself." >&2
    return 1
  fi
  if ! apt_install redis-server redis-tools; then
    echo "ci: could not install redis-server / redis-tools with apt-get; install them yourself" >&2
    return 1
  fi
}

# ensure_compose: a Compose implementation for the compose test (docker's plugin, else Debian's docker-compose).
# Never fatal: without one that test skips, and this says why.
ensure_compose() {
  if { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } ||
    command -v docker-compose >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci: no docker compose / docker-compose and no apt-get: the compose test will skip" >&2
  elif ! can_be_root; then
    echo "ci: installing docker-compose (apt-get) needs root, and this user is not root and has no password-less" \
      "sudo: the compose test will skip (install the package docker-compose to run it)" >&2
  elif ! apt_install docker-compose; then
    echo "ci: could not install docker-compose with apt-get: the compose test will skip" >&2
  fi
  return 0
}

# ensure_chromium: Debian's chromium, the browser of the demo page's test (tests/test_service_ui.py, driven by
# Playwright's Python client; never a browser Playwright downloads). Never fatal here: without it that test
# fails under CI=true (CI must run it) and skips elsewhere, and this says why.
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci: no chromium and no apt-get: the browser test cannot run (install Debian's chromium)" >&2
  elif ! can_be_root; then
    echo "ci: installing chromium (apt-get) needs root, and this user is not root and has no password-less sudo:" \
      "the browser test cannot run (install the package chromium)" >&2
  elif ! apt_install chromium; then
    echo "ci: could not install chromium with apt-get: the browser test cannot run" >&2
  fi
  return 0
}
