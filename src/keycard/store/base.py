"""The one storage interface. SQLite and PostgreSQL implement it; one conformance suite tests both.

keycard stores *records*: JSON documents addressed by ``(kind, name)`` — a folder, a project,
the allow policy of a resource, a custom role, a group, a deny policy, an org policy, an
operation, a server signing key. Every commit is atomic and isolated — it behaves as one
transaction of its own (an implementation may write several commits in one database transaction,
as long as each keeps all of this) — and

- checks each ``expect`` precondition (the record's current revision, or ``None`` = must not
  exist) and fails with :class:`keycard.errors.Aborted` writing nothing if one does not hold;
- applies its puts and deletes;
- appends its audit entries to the hash-chained audit log;
- bumps the store's revision by one and stamps every touched record with it;
- appends one :class:`Change` per touched record to the change log (the change feed replicas
  follow), and wakes followers (PostgreSQL: NOTIFY).

Revisions are a single, gap-free, increasing integer per store. Etags derive from them.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["ABORTED_MESSAGE", "AccessRecord", "AuditEntry", "Change", "Delete", "Expect", "Page", "Put", "Record",
           "Store"]

# Google's message for a write whose etag (precondition) is stale: one text for every store and API
ABORTED_MESSAGE = ("There were concurrent policy changes. "
                   "Please retry the whole read-modify-write with exponential backoff.")


@dataclass(frozen=True, slots=True)
class Record:
    kind: str                      # e.g. "resource", "iam_policy", "role", "group", "deny_policy", "operation"
    name: str                      # unique within kind, e.g. "//cloudresourcemanager.googleapis.com/projects/123"
    data: Mapping[str, Any]        # the JSON document
    revision: int                  # store revision of the last write to this record
    created_revision: int
    parent: str | None = None      # optional secondary key for listing children (e.g. the parent resource)
    deleted: bool = False          # soft-deleted (kept for undelete / listing with show_deleted)


@dataclass(frozen=True, slots=True)
class Put:
    kind: str
    name: str
    data: Mapping[str, Any]
    parent: str | None = None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove a record for good (soft deletion is a Put with deleted=True)."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Change:
    revision: int
    kind: str
    name: str
    op: str                        # "put" | "delete"
    record: Record | None          # the record as written by that revision (None for delete)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    revision: int | None           # store revision of the commit that wrote it (None for read audits)
    time: str                      # RFC 3339
    entry: Mapping[str, Any]       # a Cloud Audit Logs LogEntry
    prev_hash: str
    hash: str                      # sha256 hex of prev_hash + canonical JSON of entry


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One row of the access record: ``hits`` authorization checks of one (principal, permission,
    resource, decision) within one UTC minute (see keycard.store.access_log)."""

    minute: int                    # minutes since the Unix epoch (UTC)
    principal: str                 # member key (user:…, serviceAccount:…, principal://…; allUsers: anonymous)
    permission: str
    resource: str                  # full resource name the permission was checked on
    granted: bool
    hits: int = 1


@dataclass(frozen=True, slots=True)
class Page:
    records: Sequence[Record]
    next_token: str = ""


@dataclass(frozen=True, slots=True)
class Expect:
    """Precondition of a commit: the record's revision must equal ``revision`` (None: must be absent)."""

    kind: str
    name: str
    revision: int | None


@runtime_checkable
class Store(Protocol):
    """Implemented by keycard.store.sql.SqlStore for sqlite:/// and postgresql:// URLs."""

    url: str

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration (idempotent)."""

    def close(self) -> None: ...

    # ------------------------------------------------------------------------------- reads
    def head(self) -> int:
        """The newest committed revision (0 for an empty store)."""

    def get(self, kind: str, name: str) -> Record | None:
        """The record, soft-deleted ones included; None if absent."""

    def list(self, kind: str, *, parent: str | None = None, prefix: str | None = None,
             include_deleted: bool = False, page_size: int = 1000, page_token: str = "") -> Page:
        """Records of ``kind`` ordered by name; filtered by exact ``parent`` and/or name ``prefix``."""

    def scan(self, kinds: Sequence[str] | None = None) -> Iterator[Record]:
        """Every record (of the given kinds), for building in-memory state at start-up."""

    def changes(self, since: int, *, limit: int = 10_000) -> builtins.list[Change]:
        """Changes with revision > since, oldest first (the change feed)."""

    def wait(self, since: int, timeout: float) -> int:
        """Block until head() > since or ``timeout`` seconds pass; return head()."""

    # ------------------------------------------------------------------------------ writes
    def commit(self, puts: Sequence[Put] = (), deletes: Sequence[Delete] = (), *,
               expect: Sequence[Expect] = (), audit: Sequence[Mapping[str, Any]] = ()) -> int:
        """Apply everything in one transaction; return the new revision. Raises Aborted on a
        failed precondition (nothing written)."""

    # -------------------------------------------------------------------------------- audit
    def append_audit(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append read (Data Access) audit entries outside any commit."""

    def audit(self, *, since_seq: int = 0, limit: int = 1000,
              newest_first: bool = False) -> builtins.list[AuditEntry]: ...

    def verify_audit(self) -> tuple[bool, int | None, str]:
        """Recompute the hash chain: (ok, first broken seq or None, message)."""

    # ------------------------------------------------------------------------ access record
    def record_access(self, rows: Sequence[AccessRecord]) -> None:
        """Add each row's hits to the row of the same (minute, principal, permission, resource, granted),
        creating it if absent; one transaction, outside any commit (no revision, no audit entry)."""

    def accesses(self, *, since_minute: int = 0, until_minute: int | None = None,
                 batch: int = 10_000) -> Iterator[AccessRecord]:
        """Access rows with ``since_minute <= minute < until_minute``, by key, read in batches."""

    def prune_access(self, before_minute: int) -> int:
        """Delete access rows older than ``before_minute`` (the retention window); return how many."""

