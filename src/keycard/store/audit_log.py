"""The hash-chained audit log inside the SQL store.

Entry ``seq`` (1, 2, 3, … without gaps) stores ``prev_hash`` (the hash of entry ``seq - 1``, 64 zeros
for the first) and ``hash = sha256(prev_hash + canonical JSON of entry)``. Appends lock the
``meta.audit_seq`` row, so concurrent appenders chain one after the other. The hash covers the entry
only (time and revision are copied from it or from the commit and are not part of the chain).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from keycard.store.base import AuditEntry
from keycard.store.codec import GENESIS_HASH, chain_hash, dumps
from keycard.store.schema import AUDIT_SEQ, audit, meta

__all__ = ["append", "canonical_entries", "to_entry", "verify"]

_BATCH = 1000


def canonical_entries(entries: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any], str]]:
    """Validate entries up front (before any transaction): each with its canonical JSON."""
    return [(entry, dumps(entry, field="audit")) for entry in entries]


def append(conn: Connection, entries: Sequence[tuple[Mapping[str, Any], str]], revision: int | None,
           now: str) -> None:
    """Append entries in the caller's transaction (takes the audit_seq row lock)."""
    if not entries:
        return
    last = int(conn.execute(
        update(meta).where(meta.c.key == AUDIT_SEQ).values(value=meta.c.value + len(entries))
        .returning(meta.c.value)
    ).scalar_one())
    seq = last - len(entries) + 1
    prev: str = GENESIS_HASH
    if seq > 1:
        found = conn.execute(select(audit.c.hash).where(audit.c.seq == seq - 1)).scalar_one_or_none()
        prev = str(found) if found is not None else GENESIS_HASH  # a deleted tail shows up in verify()
    rows = []
    for entry, text in entries:
        stamp = entry.get("timestamp")
        digest = chain_hash(prev, text)
        rows.append({"seq": seq, "revision": revision, "time": stamp if isinstance(stamp, str) else now,
                     "entry": text, "prev_hash": prev, "hash": digest})
        prev = digest
        seq += 1
    conn.execute(audit.insert(), rows)


def to_entry(row: Any) -> AuditEntry:
    return AuditEntry(seq=int(row.seq), revision=None if row.revision is None else int(row.revision),
                      time=str(row.time), entry=json.loads(row.entry), prev_hash=str(row.prev_hash),
                      hash=str(row.hash))


def verify(engine: Engine) -> tuple[bool, int | None, str]:
    """Walk the chain in seq order; report the first entry that breaks it."""
    with engine.connect() as conn:  # read first: entries appended while we walk only lengthen the chain
        written = int(conn.execute(select(meta.c.value).where(meta.c.key == AUDIT_SEQ)).scalar_one())
    expected = 1
    prev = GENESIS_HASH
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(audit.c.seq, audit.c.entry, audit.c.prev_hash, audit.c.hash)
                .where(audit.c.seq >= expected).order_by(audit.c.seq).limit(_BATCH)
            ).all()
        for row in rows:
            seq = int(row.seq)
            if seq != expected:
                return False, expected, f"audit entry seq {expected} is missing (the next entry is seq {seq})."
            if row.prev_hash != prev:
                return (False, seq, f"audit entry seq {seq} does not chain to seq {seq - 1} "
                                    "(entries deleted, reordered or rewritten).")
            try:
                text = dumps(json.loads(row.entry), field="audit")
            except ValueError:
                return False, seq, f"audit entry seq {seq} is not valid JSON (edited)."
            if chain_hash(prev, text) != row.hash:
                return False, seq, f"audit entry seq {seq} does not match its hash (edited)."
            prev = str(row.hash)
            expected += 1
        if len(rows) < _BATCH:
            break
    count = expected - 1
    if count < written:
        return (False, expected, f"audit log ends at seq {count} but {written} entries were written "
                                 "(tail deleted).")
    return True, None, f"audit chain intact: {count} entries."
