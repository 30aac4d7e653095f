"""SqlStore: the Store protocol on SQLAlchemy Core, for ``sqlite:///path`` and ``postgresql://…``.

Commits. Every transaction that commits first locks the single ``meta.head`` row (PostgreSQL:
``SELECT … FOR UPDATE``; SQLite: ``BEGIN IMMEDIATE``, which takes the database write lock up front, so
two writers can never deadlock upgrading a read lock), and sets it to its last revision at the end, so
revisions are gap-free (a rolled-back transaction rolls back its revisions too) and writers are
serialised (on PostgreSQL READ COMMITTED is then enough, because every later statement of the
transaction sees everything committed before the lock was granted). Only after the lock are
preconditions checked; a failed one raises :class:`~keycard.errors.Aborted` and writes nothing. On
PostgreSQL the transaction also runs ``NOTIFY keycard_changes, '<revision>'``, delivered at COMMIT.

Group commit. Within one process, commits that arrive while another is being written queue up, and
the next one to take the write lock writes all of them in one transaction: in queue order, each with
its own preconditions (a failed one is Aborted alone and uses no revision), its own revision, its own
change-log rows and audit entries, exactly as if they had been committed one after the other. A
transaction costs one fsync however many commits it carries, which is what lets concurrent writers
go faster than one fsync each. The hot statements are plain DBAPI text, prepared once (no SQL
expression building per call).

SQLite durability. The database runs in WAL mode with ``synchronous=FULL``: the WAL is fsync'ed at
every COMMIT, before the commit returns. With ``synchronous=NORMAL`` (the usual WAL pairing) a commit
survives the process being killed (``kill -9``: the WAL is in the OS page cache) but the last
transactions can be lost on power failure or an OS crash, because the WAL is only synced at
checkpoints. keycard acknowledges writes that carry etags and audit records, so an acknowledged write
must survive power loss: FULL costs one fsync per transaction and buys exactly that; no commit returns
before the transaction that carries it is synced. Writers of other processes (``keycard serve
--workers``, a second server, the CLI) queue on an ``flock`` of ``<database>-writer.lock``, taken before
``BEGIN IMMEDIATE`` and released after COMMIT: the kernel wakes the next writer as soon as the lock is
free, where SQLite's busy handler would sleep 1, 2, 5, 10 … ms between retries. ``busy_timeout`` (10 s)
still covers writers that do not take that lock. Reads never block writers or wait for them (WAL);
single-statement reads run in autocommit, the others in a deferred ``BEGIN``.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:     # Windows: no flock; SQLite's busy handler alone queues other processes' writers
    fcntl = None  # type: ignore[assignment]

from sqlalchemy import Connection, Engine, create_engine, event, select, text, tuple_
from sqlalchemy.engine import make_url

from keycard.errors import Aborted, InvalidArgument
from keycard.store import access_log, audit_log
from keycard.store.base import ABORTED_MESSAGE, AccessRecord, AuditEntry, Change, Delete, Expect, Page, Put, Record
from keycard.store.codec import (
    GENESIS_HASH,
    chain_hash,
    check_text,
    decode_page_token,
    dumps,
    encode_page_token,
    prefix_upper_bound,
    rfc3339,
)
from keycard.store.listener import CHANNEL, PgListener
from keycard.store.schema import AUDIT_SEQ, HEAD, records
from keycard.store.schema import audit as audit_table

__all__ = ["ABORTED_MESSAGE", "SqlStore", "open_store"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATE_LOCK = int.from_bytes(b"keycard", "big")   # pg_advisory_xact_lock key
_BATCH = 1000
_CHUNK = 400                                  # keys per IN (…) lookup
_SQLITE_POLL = 0.015
_WRITE = "keycard_write"                      # execution option: this transaction writes
_RECENT = 5000                                # changes of local commits kept for the change feed

Key = tuple[str, str]
# one row of the changes table: revision, kind, name, op, data, parent, deleted, created_revision
ChangeRow = tuple[int, str, str, str, str | None, str | None, bool | None, int | None]

# The hot statements, as DBAPI text (``?`` placeholders; PostgreSQL gets ``%s``): no SQL expression building,
# compilation or cache-key work per call. Columns as in keycard.store.schema.
_SQL = {
    "head": "SELECT value FROM meta WHERE key = 'head'",
    "lock_head": "SELECT value FROM meta WHERE key = 'head'",             # PostgreSQL: … FOR UPDATE
    "set_head": "UPDATE meta SET value = ? WHERE key = 'head'",
    "get": "SELECT kind, name, data, revision, created_revision, parent, deleted FROM records "
           "WHERE kind = ? AND name = ?",
    "insert": "INSERT INTO records (kind, name, parent, data, revision, created_revision, deleted) "
              "VALUES (?, ?, ?, ?, ?, ?, ?)",
    "update": "UPDATE records SET parent = ?, data = ?, revision = ?, deleted = ? WHERE kind = ? AND name = ?",
    "delete": "DELETE FROM records WHERE kind = ? AND name = ?",
    "log": "INSERT INTO changes (revision, kind, name, op, data, parent, deleted, created_revision) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "changes": "SELECT revision, kind, name, op, data, parent, deleted, created_revision FROM changes "
               "WHERE revision > ? ORDER BY revision, kind, name LIMIT ?",
    "changes_at": "SELECT revision, kind, name, op, data, parent, deleted, created_revision FROM changes "
                  "WHERE revision = ? ORDER BY kind, name",
    "audit_seq": "UPDATE meta SET value = value + ? WHERE key = 'audit_seq' RETURNING value",
    "audit_prev": "SELECT hash FROM audit WHERE seq = ?",
    "audit_insert": 'INSERT INTO audit (seq, revision, "time", entry, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?)',
}
assert HEAD == "head" and AUDIT_SEQ == "audit_seq"


def _statements(dialect: str) -> dict[str, str]:
    if dialect != "postgresql":
        return dict(_SQL)
    out = {k: v.replace("?", "%s") for k, v in _SQL.items()}
    out["lock_head"] += " FOR UPDATE"
    return out


@dataclass(slots=True, eq=False)
class _Pending:
    """One commit request waiting for (or done by) a group commit."""

    puts: Sequence[Put]
    texts: Sequence[str]
    deletes: Sequence[Delete]
    expect: Sequence[Expect]
    entries: Sequence[tuple[Mapping[str, Any], str]]
    abort_message: str | None
    revision: int = 0
    error: BaseException | None = None
    done: bool = False
    log: builtins.list[ChangeRow] = dataclasses.field(default_factory=builtins.list)


def _engine_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidArgument(f"Invalid store url {url!r}: use sqlite:///PATH or postgresql://…", field="url")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("sqlite", "sqlite+pysqlite"):
        path = rest[1:] if rest.startswith("/") else ""
        if not path or path == ":memory:" or "mode=memory" in path:
            raise InvalidArgument("sqlite store needs a file: use sqlite:///PATH (in-memory is not supported).",
                                  field="url")
        return f"sqlite+pysqlite:///{path}"
    raise InvalidArgument(f"Unsupported store url scheme {scheme!r}: use sqlite:///PATH or postgresql://…",
                          field="url")


def _sqlite_engine(engine_url: str) -> Engine:
    path = make_url(engine_url).database
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(engine_url, connect_args={"timeout": 10.0})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _begin)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 10000")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def _enable_wal(cursor: Any) -> None:
    """Switch to WAL (persistent in the file). Switching needs an exclusive lock and SQLite does not
    call the busy handler for it, so a second process opening a brand-new database retries here."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower() == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("could not switch the SQLite database to WAL mode: database is locked")
        time.sleep(0.01)


def _record(row: Any) -> Record:
    return Record(kind=str(row.kind), name=str(row.name), data=json.loads(row.data), revision=int(row.revision),
                  created_revision=int(row.created_revision), parent=row.parent, deleted=bool(row.deleted))


def _change(row: Sequence[Any]) -> Change:
    """A Change from a changes-table row (DBAPI tuple or ChangeRow)."""
    revision, kind, name, op, data, parent, deleted, created = row
    record = None
    if op == "put":
        record = Record(kind=str(kind), name=str(name), data=json.loads(data), revision=int(revision),
                        created_revision=int(created), parent=parent, deleted=bool(deleted))
    return Change(revision=int(revision), kind=str(kind), name=str(name), op=str(op), record=record)


def _revision_of(row: ChangeRow) -> int:
    return row[0]


class SqlStore:
    """The Store protocol on SQLite (embedded) or PostgreSQL (scale-out). Thread-safe."""

    def __init__(self, url: str, *, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.url = url
        engine_url = _engine_url(url)
        self.dialect = "postgresql" if engine_url.startswith("postgresql") else "sqlite"
        self.engine: Engine = _sqlite_engine(engine_url) if self.dialect == "sqlite" else create_engine(engine_url)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._sql = _statements(self.dialect)
        self._write_lock = threading.Lock()        # held by the leader of a group commit (and by migrate)
        # SQLite: the one pooled connection group commits write on (under _write_lock), kept checked out. A
        # connection's page cache is dropped whenever another connection has written since its last
        # transaction; the store's own writes all going through this one keep its cache (the records
        # index, the audit tail) warm instead of reading those pages back from the OS at every commit.
        self._writer: Any = None
        self._queue: builtins.list[_Pending] = []  # commit requests waiting for the next leader
        self._queue_lock = threading.Lock()
        # Changes of this process's own commits, covering every revision in (_recent_from, _recent_to]:
        # the change feed right after a local commit needs no query (see changes()).
        self._recent: builtins.list[ChangeRow] = []
        self._recent_from = self._recent_to = -1
        self._recent_lock = threading.Lock()
        self._listener: PgListener | None = None
        if self.dialect == "postgresql":
            self._conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = PgListener(self._conninfo, CHANNEL)
        # SQLite: writers of every process queue on this (see the module doc)
        self._process_lock: contextlib.AbstractContextManager[object] = (
            _FileLock(f"{make_url(self.engine.url).database}-writer.lock") if self.dialect == "sqlite"
            else contextlib.nullcontext())
        # called with the last revision of each commit that wrote (keycard serve --workers publishes it)
        self.on_commit: Callable[[int], None] | None = None

    def __repr__(self) -> str:
        return f"SqlStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------------ lifecycle
    def migrate(self) -> None:
        """``alembic upgrade head`` in one transaction; concurrent callers queue (PG advisory lock,
        SQLite BEGIN IMMEDIATE) and the later ones find nothing to do.

        A database already at the newest migration is recognised with one query, without importing
        Alembic (about a third of a second of every server's cold start)."""
        if self.schema_revision() == newest_migration():
            return
        from alembic import command
        from alembic.config import Config
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        with self._transaction(write=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def schema_revision(self) -> str | None:
        """The database's Alembic revision (None before the first migration)."""
        with self._cursor() as cur:
            try:
                cur.execute("SELECT version_num FROM alembic_version")
            except Exception:   # no table yet: a fresh database
                return None
            rows = cur.fetchall()
        return str(rows[0][0]) if len(rows) == 1 else None

    def before_fork(self) -> None:
        """Close every connection before the process forks (no thread may be using the store): a child must
        never inherit an open SQLite connection (SQLite's rule: its file locks belong to the process) or a
        PostgreSQL socket. The store opens new connections on its next use."""
        with self._write_lock:
            self._drop_writer()
        self.engine.dispose()

    def after_fork(self) -> None:
        """In a forked child, before any use: a change-feed listener of its own (before_fork closed every
        connection, so the child opens its own on first use; its thread was never started in the parent)."""
        if self._listener is not None:
            self._listener = PgListener(self._conninfo, CHANNEL)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._write_lock:
            self._drop_writer()
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        # SQLite: writers queue on locks instead of spinning in sqlite's busy handler, whose growing sleeps
        # gave seconds-long tails under contention: this process's on _write_lock, every process's on the
        # writer lock file (see the module doc).
        sqlite = write and self.dialect == "sqlite"
        lock = self._write_lock if sqlite else contextlib.nullcontext()
        with lock, self._process_lock if sqlite else contextlib.nullcontext(), self.engine.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A DBAPI cursor on a pooled connection, for single reads (SQLite: autocommit; PostgreSQL: the
        pool rolls the read-only transaction back on return)."""
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        finally:
            raw.close()

    # ---------------------------------------------------------------------------- reads
    def head(self) -> int:
        with self._cursor() as cur:
            cur.execute(self._sql["head"])
            return int(cur.fetchone()[0])

    def get(self, kind: str, name: str) -> Record | None:
        check_text(kind, "kind")
        check_text(name, "name")
        with self._cursor() as cur:
            cur.execute(self._sql["get"], (kind, name))
            row = cur.fetchone()
        if row is None:
            return None
        kind_, name_, data, revision, created, parent, deleted = row
        return Record(kind=str(kind_), name=str(name_), data=json.loads(data), revision=int(revision),
                      created_revision=int(created), parent=parent, deleted=bool(deleted))

    def list(self, kind: str, *, parent: str | None = None, prefix: str | None = None,
             include_deleted: bool = False, page_size: int = 1000, page_token: str = "") -> Page:
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative.", field="page_size")
        size = page_size or 1000
        for value, field in ((kind, "kind"), (parent, "parent"), (prefix, "prefix")):
            check_text(value, field)
        query = select(records).where(records.c.kind == kind)
        if parent is not None:
            query = query.where(records.c.parent == parent)
        if prefix:
            query = query.where(records.c.name >= prefix)
            upper = prefix_upper_bound(prefix)
            if upper is not None:
                query = query.where(records.c.name < upper)
        if not include_deleted:
            query = query.where(records.c.deleted.is_(False))
        if page_token:
            query = query.where(records.c.name > decode_page_token(page_token))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(records.c.name).limit(size + 1)).all()
        page = [_record(row) for row in rows[:size]]
        return Page(records=page, next_token=encode_page_token(page[-1].name) if len(rows) > size else "")

    def scan(self, kinds: Sequence[str] | None = None) -> Iterator[Record]:
        """Every record (soft-deleted included) by (kind, name), read in batches of 1000.

        Batches are separate reads: a record committed during the scan may appear at a newer revision
        than the head read before it. Callers that follow the change feed afterwards (from the head
        they read *before* scanning) converge, since replaying changes is idempotent."""
        last: Key | None = None
        while True:
            query = select(records)
            if kinds is not None:
                query = query.where(records.c.kind.in_(list(kinds)))
            if last is not None:
                query = query.where(tuple_(records.c.kind, records.c.name) > tuple_(*last))
            with self.engine.connect() as conn:
                rows = conn.execute(query.order_by(records.c.kind, records.c.name).limit(_BATCH)).all()
            for row in rows:
                yield _record(row)
            if len(rows) < _BATCH:
                return
            last = (str(rows[-1].kind), str(rows[-1].name))

    def changes(self, since: int, *, limit: int = 10_000) -> builtins.list[Change]:
        """Changes after ``since``, oldest first. ``limit`` never splits a revision: when it cuts one,
        that revision's changes are all returned (so ``since = last.revision`` never skips any).

        Right after a commit of this process, the changes since a revision it covers come from memory
        (the commits of this process since then, nothing from other writers in between): the feed up to
        that commit, without a query. Later revisions, if any, come with the next call, as from a read
        made a moment earlier."""
        if limit < 1:
            raise InvalidArgument("limit must be at least 1.", field="limit")
        with self._recent_lock:
            if self._recent_from <= since < self._recent_to:
                rows = self._recent[bisect.bisect_right(self._recent, since, key=_revision_of):]
                if len(rows) < limit:
                    return [_change(row) for row in rows]
        with self._cursor() as cur:
            cur.execute(self._sql["changes"], (since, limit))
            rows = builtins.list(cur.fetchall())
            if len(rows) == limit:
                cut = rows[-1][0]
                rows = [row for row in rows if row[0] != cut]
                cur.execute(self._sql["changes_at"], (cut,))
                rows.extend(cur.fetchall())
        return [_change(row) for row in rows]

    def wait(self, since: int, timeout: float) -> int:
        if self._listener is not None:
            return self._listener.wait(since, timeout, self.head)
        deadline = time.monotonic() + max(timeout, 0.0)
        current = self.head()
        while current <= since:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(_SQLITE_POLL, remaining))
            current = self.head()
        return current

    # --------------------------------------------------------------------------- writes
    def commit(self, puts: Sequence[Put] = (), deletes: Sequence[Delete] = (), *,
               expect: Sequence[Expect] = (), audit: Sequence[Mapping[str, Any]] = (),
               abort_message: str | None = None) -> int:
        """Apply puts, deletes and audit entries in one transaction; return the new revision.

        Raises Aborted (``abort_message`` or the standard one) when an ``expect`` does not hold, and
        InvalidArgument when a (kind, name) appears twice among puts and deletes; nothing is written
        then. Deleting an absent record is a no-op (no change is logged for it).

        Group commit: concurrent commits of this process queue up; whichever takes the write lock first
        (the leader) runs every queued request in one database transaction, in queue order, each with
        its own preconditions and its own revision, as if committed one after the other — so N writers
        share one fsync. A request whose precondition fails is Aborted and writes nothing (and uses no
        revision); the others still commit. Every caller returns once its request is durable."""
        keys: builtins.list[Key] = [(p.kind, p.name) for p in puts] + [(d.kind, d.name) for d in deletes]
        for kind, name in [*keys, *((e.kind, e.name) for e in expect)]:
            check_text(kind, "kind")
            check_text(name, "name")
        for p in puts:
            check_text(p.parent, "parent")
        if len(set(keys)) != len(keys):
            seen: set[Key] = set()
            for key in keys:
                if key in seen:
                    raise InvalidArgument(f"{key[0]} {key[1]!r} appears more than once in one commit; "
                                          "write each record once.", field="puts")
                seen.add(key)
        pending = _Pending(puts, [dumps(p.data) for p in puts], deletes, expect,
                           audit_log.canonical_entries(audit), abort_message)
        with self._queue_lock:
            self._queue.append(pending)
        with self._write_lock:
            if not pending.done:                     # nobody took it: lead a group with whatever is queued
                # (SQLite: once other processes' writers are done, so the group takes in who came meanwhile)
                with self._process_lock:
                    with self._queue_lock:
                        batch, self._queue = self._queue, []
                    self._commit_group(batch)
        if pending.error is not None:
            raise pending.error
        return pending.revision

    def _commit_group(self, batch: Sequence[_Pending]) -> None:
        """Run ``batch`` in one transaction (under the write lock); record each request's outcome."""
        try:
            now = rfc3339(self._clock())
            sqlite = self.dialect == "sqlite"
            if sqlite:
                if self._writer is None:
                    self._writer = self.engine.raw_connection()
                raw = self._writer
            else:
                raw = self.engine.raw_connection()   # DBAPI level: no per-statement SQLAlchemy work
            try:
                cur = raw.cursor()
                try:
                    if sqlite:
                        cur.execute("BEGIN IMMEDIATE")   # the database write lock, up front (see module doc)
                    first, last = self._write_group(cur, batch, now)
                    raw.commit()
                except BaseException:
                    try:
                        raw.rollback()
                    except BaseException:
                        if sqlite:                       # unusable: the next group opens another
                            self._drop_writer()
                        raise
                    raise
                finally:
                    cur.close()
            finally:
                if not sqlite:
                    raw.close()
            self._remember(batch, first, last)
            if last != first and self.on_commit is not None:
                with contextlib.suppress(Exception):   # committed: a failing listener must not report otherwise
                    self.on_commit(last)
        except BaseException as exc:
            for p in batch:
                p.error, p.revision = exc, 0
            if not isinstance(exc, Exception):
                raise
        finally:
            for p in batch:
                p.done = True

    def _drop_writer(self) -> None:
        """Close the SQLite writer connection (under _write_lock)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.invalidate()              # closed for good, not returned to the pool

    def _write_group(self, cur: Any, batch: Sequence[_Pending], now: str) -> tuple[int, int]:
        """The statements of a group commit; returns (head before, head after)."""
        sql = self._sql
        cur.execute(sql["lock_head"])               # PostgreSQL: the row lock that serialises writers
        head = int(cur.fetchone()[0])
        wanted = sorted({key for p in batch for key in (*((x.kind, x.name) for x in p.puts),
                                                       *((x.kind, x.name) for x in p.deletes),
                                                       *((x.kind, x.name) for x in p.expect))})
        before = self._revisions(cur, wanted)       # (revision, created_revision) of existing records
        state: dict[Key, tuple[int, int] | None] = dict(before)
        final: dict[Key, tuple[str, str | None, str | None, bool, int, int] | None] = {}
        audit_rows: builtins.list[tuple[int, Mapping[str, Any], str]] = []
        revision = head
        for p in batch:
            if any((None if (s := state.get((e.kind, e.name))) is None else s[0]) != e.revision for e in p.expect):
                p.error = Aborted(p.abort_message or ABORTED_MESSAGE)  # no metadata: it would reach clients
                continue
            revision += 1
            p.revision = revision
            for put, data in zip(p.puts, p.texts, strict=True):
                key = (put.kind, put.name)
                existing = state.get(key)
                created = revision if existing is None else existing[1]
                state[key] = (revision, created)
                final[key] = ("put", data, put.parent, put.deleted, revision, created)
                p.log.append((revision, put.kind, put.name, "put", data, put.parent, put.deleted, created))
            for d in p.deletes:
                key = (d.kind, d.name)
                if state.get(key) is not None:
                    state[key] = None
                    final[key] = None
                    p.log.append((revision, d.kind, d.name, "delete", None, None, None, None))
            audit_rows.extend((revision, entry, text) for entry, text in p.entries)
        if revision == head:
            return head, head                       # every request aborted: nothing to write
        inserts, updates, gone = [], [], []
        for key, row in final.items():
            if row is None:
                if key in before:
                    gone.append(key)
            elif key in before:
                updates.append((row[2], row[1], row[4], row[3], key[0], key[1]))
            else:
                inserts.append((key[0], key[1], row[2], row[1], row[4], row[5], row[3]))
        if gone:
            cur.executemany(sql["delete"], gone)
        if updates:
            cur.executemany(sql["update"], updates)
        if inserts:
            cur.executemany(sql["insert"], inserts)
        log = [row for p in batch if p.error is None for row in p.log]
        if log:
            cur.executemany(sql["log"], log)
        if audit_rows:
            self._append_audit(cur, audit_rows, now)
        cur.execute(sql["set_head"], (revision,))
        if self.dialect == "postgresql":
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(revision)))
        return head, revision

    def _revisions(self, cur: Any, keys: Sequence[Key]) -> dict[Key, tuple[int, int]]:
        """(revision, created_revision) of the existing records among ``keys``."""
        found: dict[Key, tuple[int, int]] = {}
        mark = "%s" if self.dialect == "postgresql" else "?"
        by_kind: dict[str, builtins.list[str]] = {}
        for kind, name in keys:
            by_kind.setdefault(kind, []).append(name)
        # ``kind = ? AND name IN (…)``: a search of the primary key on both databases (SQLite plans a row-value
        # ``(kind, name) IN (VALUES …)`` of two or more keys as a scan of the whole table)
        for kind, names in by_kind.items():
            for start in range(0, len(names), _CHUNK):
                chunk = names[start:start + _CHUNK]
                cur.execute("SELECT kind, name, revision, created_revision FROM records "
                            f"WHERE kind = {mark} AND name IN ({', '.join([mark] * len(chunk))})", [kind, *chunk])
                for kind_, name, revision, created in cur.fetchall():
                    found[(str(kind_), str(name))] = (int(revision), int(created))
        return found

    def _append_audit(self, cur: Any, rows: Sequence[tuple[int, Mapping[str, Any], str]], now: str) -> None:
        """Chain ``rows`` (revision, entry, canonical text) onto the audit log, in order."""
        cur.execute(self._sql["audit_seq"], (len(rows),))  # PostgreSQL: locks the audit_seq row
        seq = int(cur.fetchone()[0]) - len(rows) + 1
        prev = GENESIS_HASH
        if seq > 1:
            cur.execute(self._sql["audit_prev"], (seq - 1,))
            found = cur.fetchone()
            prev = str(found[0]) if found is not None else GENESIS_HASH  # a deleted tail shows up in verify()
        out = []
        for revision, entry, entry_text in rows:
            stamp = entry.get("timestamp")
            digest = chain_hash(prev, entry_text)
            out.append((seq, revision, stamp if isinstance(stamp, str) else now, entry_text, prev, digest))
            prev = digest
            seq += 1
        cur.executemany(self._sql["audit_insert"], out)

    def _remember(self, batch: Sequence[_Pending], first: int, last: int) -> None:
        """Keep the group's changes for the change feed (see changes())."""
        if last == first:
            return
        rows = sorted((row for p in batch if p.error is None for row in p.log), key=lambda r: (r[0], r[1], r[2]))
        with self._recent_lock:
            if first != self._recent_to or len(self._recent) + len(rows) > _RECENT:
                self._recent, self._recent_from = [], first   # another writer came in between, or full
            self._recent.extend(rows)
            self._recent_to = last

    # ---------------------------------------------------------------------------- audit
    def append_audit(self, entries: Sequence[Mapping[str, Any]]) -> None:
        prepared = audit_log.canonical_entries(entries)
        if not prepared:
            return
        with self._transaction(write=True) as conn:
            audit_log.append(conn, prepared, None, rfc3339(self._clock()))

    def audit(self, *, since_seq: int = 0, limit: int = 1000, newest_first: bool = False) -> builtins.list[AuditEntry]:
        order = audit_table.c.seq.desc() if newest_first else audit_table.c.seq
        query = select(audit_table).where(audit_table.c.seq > since_seq).order_by(order).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [audit_log.to_entry(row) for row in rows]

    def verify_audit(self) -> tuple[bool, int | None, str]:
        return audit_log.verify(self.engine)

    # -------------------------------------------------------------------- access record
    def record_access(self, rows: Sequence[AccessRecord]) -> None:
        for r in rows:
            for value, field in ((r.principal, "principal"), (r.permission, "permission"), (r.resource, "resource")):
                check_text(value, field)
        if not rows:
            return
        with self._transaction(write=True) as conn:
            access_log.upsert(conn, rows, self.dialect)

    def accesses(self, *, since_minute: int = 0, until_minute: int | None = None,
                 batch: int = 10_000) -> Iterator[AccessRecord]:
        if batch < 1:
            raise InvalidArgument("batch must be at least 1.", field="batch")
        return access_log.read(self.engine, since_minute, until_minute, batch)

    def prune_access(self, before_minute: int) -> int:
        with self._transaction(write=True) as conn:
            return access_log.prune(conn, before_minute)


class _FileLock:
    """An exclusive ``flock`` of one file, for writers of different processes. Each process opens the
    file itself (a forked child re-opens it: a lock belongs to an open file description, which fork
    shares). Where the file cannot be created (a read-only directory), nothing is locked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = -1

    def __enter__(self) -> object:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._fd = None
        if self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def newest_migration() -> str:
    """The head revision: migrations are named ``NNNN_what.py`` with ``revision = "NNNN"`` in a single line
    of descent (tests/store/test_migrations.py holds every file to that)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def open_store(url: str, *, migrate: bool = False) -> SqlStore:
    """A store for ``sqlite:///PATH`` or ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`` (psycopg 3).

    With ``migrate=True`` the schema is brought up to date first (idempotent; see SqlStore.migrate)."""
    store = SqlStore(url)
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
