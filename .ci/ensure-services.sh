#!/usr/bin/env bash
# Make sure the real servers the tests use are installed and running:
# PostgreSQL and MariaDB (started if stopped), Debian's Prometheus and VictoriaMetrics (installed if missing).
# Under CI=true a failure here fails the run; elsewhere it only warns, and the
# integration tests that need the missing part skip with a reason.
set -uo pipefail

fail() {
  echo "ensure-services: $*" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "ensure-services: installing Debian's prometheus package"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null \
    || fail "could not install prometheus (apt-get install -y prometheus)"
fi
# The Debian package starts a system Prometheus on :9090 where systemd runs; tests use their own ports.

# VictoriaMetrics: the dashboards' queries must answer the same there (tests/integration/test_dashboards.py).
if ! command -v victoria-metrics >/dev/null; then
  echo "ensure-services: installing Debian's victoria-metrics package"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq victoria-metrics >/dev/null \
    || fail "could not install victoria-metrics (apt-get install -y victoria-metrics)"
fi

# valgrind (with its headers) and a C compiler: the instruction-count smoke test needs them.
bash "$(dirname "$0")/../benchmarks/ensure_tools.sh" || fail "could not install the benchmark tools"

if ! port_open 5432; then
  echo "ensure-services: starting PostgreSQL"
  if [ -d /etc/postgresql ]; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_port 5432 || fail "PostgreSQL is not listening on 127.0.0.1:5432"
fi

if ! port_open 3306; then
  echo "ensure-services: starting MariaDB"
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_port 3306 || fail "MariaDB is not listening on 127.0.0.1:3306"
fi
exit 0
