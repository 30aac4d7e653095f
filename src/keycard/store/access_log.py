"""The access record inside the SQL store: authorization checks aggregated per minute.

One row per (minute, principal, permission, resource, granted) with a ``hits`` count; writers add to
the count (an upsert), so several replicas and several flushes of the same minute merge into one row.
Rows are written in key order, so two writers upserting overlapping rows take the row locks in the
same order (no deadlock on PostgreSQL). The record is not part of the hash-chained audit log and
bumps no revision: it is telemetry of decisions, written off the request path (see
keycard.services.access_record), kept for a retention window and pruned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, tuple_

from keycard.store.base import AccessRecord
from keycard.store.schema import access

__all__ = ["UPSERT", "prune", "read", "upsert"]

UPSERT = ("INSERT INTO access (minute, principal, permission, resource, granted, hits) VALUES (?, ?, ?, ?, ?, ?) "
          "ON CONFLICT (minute, principal, permission, resource, granted) "
          "DO UPDATE SET hits = access.hits + excluded.hits")


def upsert(conn: Connection, rows: Sequence[AccessRecord], dialect: str) -> None:
    """Add ``rows`` in the caller's transaction, merged by key and in key order."""
    merged: dict[tuple[int, str, str, str, bool], int] = {}
    for r in rows:
        key = (int(r.minute), r.principal, r.permission, r.resource, bool(r.granted))
        merged[key] = merged.get(key, 0) + int(r.hits)
    if not merged:
        return
    sql = UPSERT.replace("?", "%s") if dialect == "postgresql" else UPSERT
    params: list[tuple[Any, ...]] = [(*key, hits) for key, hits in sorted(merged.items())]
    conn.exec_driver_sql(sql, params)


def read(engine: Engine, since_minute: int, until_minute: int | None, batch: int) -> Iterator[AccessRecord]:
    """Rows in [since, until) by key; each batch is its own short read (keyset pagination)."""
    cols = (access.c.minute, access.c.principal, access.c.permission, access.c.resource, access.c.granted)
    last: tuple[Any, ...] | None = None
    while True:
        query = select(access).where(access.c.minute >= since_minute)
        if until_minute is not None:
            query = query.where(access.c.minute < until_minute)
        if last is not None:
            query = query.where(tuple_(*cols) > tuple_(*last))
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(*cols).limit(batch)).all()
        for row in rows:
            yield AccessRecord(int(row.minute), str(row.principal), str(row.permission), str(row.resource),
                               bool(row.granted), int(row.hits))
        if len(rows) < batch:
            return
        tail = rows[-1]
        last = (tail.minute, tail.principal, tail.permission, tail.resource, tail.granted)


def prune(conn: Connection, before_minute: int) -> int:
    n = int(conn.execute(select(func.count()).select_from(access).where(access.c.minute < before_minute))
            .scalar_one())
    if n:
        conn.execute(delete(access).where(access.c.minute < before_minute))
    return n
