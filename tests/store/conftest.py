"""Fixtures of the store conformance suite.

``store_url``/``store`` run every test on both backends: a fresh SQLite file per test, and a fresh
PostgreSQL database per test on one throwaway cluster per session (see tests/pg.py; skipped with the
reason when PostgreSQL is unavailable). ``pg_url`` is the cluster's superuser URL; another conftest can
reuse the same cluster with ``from pg import cluster_url`` (tests/ on sys.path, as done below).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from keycard.store.sql import SqlStore, open_store  # noqa: E402
from pg import PgUnavailable, cluster_url, create_database, drop_database  # noqa: E402


@pytest.fixture(scope="session")
def pg_url() -> str:
    """Superuser URL of the session's PostgreSQL server (skips the test when there is none)."""
    try:
        return cluster_url()
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, empty (not migrated) store on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keycard.db'}"
        return
    admin = request.getfixturevalue("pg_url")
    url = create_database(admin)
    yield url
    drop_database(admin, url)


@pytest.fixture
def store(store_url: str) -> Iterator[SqlStore]:
    """A migrated store on each backend, closed after the test."""
    with open_store(store_url, migrate=True) as opened:
        yield opened
