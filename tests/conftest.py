"""Fixtures of the durable tests: where a durable queue is stored (SQLite or PostgreSQL).

The PostgreSQL tests use the server at ``TRIOBUS_TEST_POSTGRES`` (default
``postgresql://postgres@127.0.0.1:5432/test``), each test in a schema of its
own, dropped afterwards. Without a server they skip, saying how to run them;
under ``CI=true`` a missing server fails the run.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("TRIOBUS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


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
        message = (
            f"{problem}: start PostgreSQL (pg_ctlcluster <version> main start, trust auth, "
            "a database named test) or set TRIOBUS_TEST_POSTGRES to a server's URL"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


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
