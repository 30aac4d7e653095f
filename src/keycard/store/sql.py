"""SqlStore: the Store protocol on SQLAlchemy Core, for ``sqlite:///path`` and ``postgresql://…``.

Commits. Every commit first bumps the single ``meta.head`` row (``UPDATE … SET value = value + 1
RETURNING value``) inside its transaction, so revisions are gap-free (a rolled-back commit also rolls
back its bump) and writers are serialised: on PostgreSQL by the row lock (READ COMMITTED is then
enough, because every later statement of the transaction sees everything committed before the lock
was granted), on SQLite by ``BEGIN IMMEDIATE``, which takes the database write lock up front, so
two writers can never deadlock upgrading a read lock. Only after that are preconditions checked; a
failed one raises :class:`~keycard.errors.Aborted` and the transaction rolls back, writing nothing.
On PostgreSQL the commit also runs ``NOTIFY keycard_changes, '<revision>'``, delivered at COMMIT.

SQLite durability. The database runs in WAL mode with ``synchronous=FULL``: the WAL is fsync'ed at
every COMMIT, before the commit returns. With ``synchronous=NORMAL`` (the usual WAL pairing) a commit
survives the process being killed (``kill -9``: the WAL is in the OS page cache) but the last
transactions can be lost on power failure or an OS crash, because the WAL is only synced at
checkpoints. keycard acknowledges writes that carry etags and audit records, so an acknowledged write
must survive power loss: FULL costs one fsync per commit and buys exactly that. ``busy_timeout`` is
10 s so writers queue behind each other instead of failing with "database is locked". Reads use a
deferred ``BEGIN`` and, thanks to WAL, never block writers or wait for them.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, bindparam, create_engine, delete, event, select, text, tuple_, update
from sqlalchemy.engine import make_url

from keycard.errors import Aborted, InvalidArgument
from keycard.store import audit_log
from keycard.store.base import AuditEntry, Change, Delete, Expect, Page, Put, Record
from keycard.store.codec import check_text, decode_page_token, dumps, encode_page_token, prefix_upper_bound, rfc3339
from keycard.store.listener import CHANNEL, PgListener
from keycard.store.schema import HEAD, changes, meta, records
from keycard.store.schema import audit as audit_table

__all__ = ["ABORTED_MESSAGE", "SqlStore", "open_store"]

ABORTED_MESSAGE = ("There were concurrent policy changes. "
                   "Please retry the whole read-modify-write with exponential backoff.")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATE_LOCK = int.from_bytes(b"keycard", "big")   # pg_advisory_xact_lock key
_BATCH = 1000
_CHUNK = 400                                  # keys per IN (…) lookup
_SQLITE_POLL = 0.015
_WRITE = "keycard_write"                      # execution option: this transaction writes

Key = tuple[str, str]


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


def _chunks(items: Sequence[Key], size: int = _CHUNK) -> Iterator[Sequence[Key]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SqlStore:
    """The Store protocol on SQLite (embedded) or PostgreSQL (scale-out). Thread-safe."""

    def __init__(self, url: str, *, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.url = url
        engine_url = _engine_url(url)
        self.dialect = "postgresql" if engine_url.startswith("postgresql") else "sqlite"
        self.engine: Engine = _sqlite_engine(engine_url) if self.dialect == "sqlite" else create_engine(engine_url)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._write_lock = threading.Lock()
        self._listener: PgListener | None = None
        if self.dialect == "postgresql":
            conninfo = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._listener = PgListener(conninfo, CHANNEL)

    def __repr__(self) -> str:
        return f"SqlStore({self.engine.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------------ lifecycle
    def migrate(self) -> None:
        """``alembic upgrade head`` in one transaction; concurrent callers queue (PG advisory lock,
        SQLite BEGIN IMMEDIATE) and the later ones find nothing to do."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
        with self._transaction(write=True) as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        # SQLite: writers of this process queue on a lock instead of spinning in sqlite's busy handler,
        # whose growing sleeps gave seconds-long tails under contention; other processes still queue on
        # BEGIN IMMEDIATE with the busy timeout.
        lock = self._write_lock if write and self.dialect == "sqlite" else contextlib.nullcontext()
        with lock, self.engine.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    # ---------------------------------------------------------------------------- reads
    def head(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(meta.c.value).where(meta.c.key == HEAD)).scalar_one())

    def get(self, kind: str, name: str) -> Record | None:
        check_text(kind, "kind")
        check_text(name, "name")
        with self.engine.connect() as conn:
            row = conn.execute(select(records).where(records.c.kind == kind, records.c.name == name)).first()
        return None if row is None else _record(row)

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
        that revision's changes are all returned (so ``since = last.revision`` never skips any)."""
        if limit < 1:
            raise InvalidArgument("limit must be at least 1.", field="limit")
        order = (changes.c.revision, changes.c.kind, changes.c.name)
        with self.engine.connect() as conn:
            rows = builtins.list(conn.execute(
                select(changes).where(changes.c.revision > since).order_by(*order).limit(limit)).all())
            if len(rows) == limit:
                cut = rows[-1].revision
                rows = [row for row in rows if row.revision != cut]
                rows.extend(conn.execute(select(changes).where(changes.c.revision == cut).order_by(*order)).all())
        out = []
        for row in rows:
            record = None
            if row.op == "put":
                record = Record(kind=str(row.kind), name=str(row.name), data=json.loads(row.data),
                                revision=int(row.revision), created_revision=int(row.created_revision),
                                parent=row.parent, deleted=bool(row.deleted))
            out.append(Change(revision=int(row.revision), kind=str(row.kind), name=str(row.name),
                              op=str(row.op), record=record))
        return out

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
        then. Deleting an absent record is a no-op (no change is logged for it)."""
        keys: builtins.list[Key] = [(p.kind, p.name) for p in puts] + [(d.kind, d.name) for d in deletes]
        for kind, name in [*keys, *((e.kind, e.name) for e in expect)]:
            check_text(kind, "kind")
            check_text(name, "name")
        for p in puts:
            check_text(p.parent, "parent")
        seen: set[Key] = set()
        for key in keys:
            if key in seen:
                raise InvalidArgument(f"{key[0]} {key[1]!r} appears more than once in one commit; "
                                      "write each record once.", field="puts")
            seen.add(key)
        texts = [dumps(p.data) for p in puts]
        entries = audit_log.canonical_entries(audit)
        wanted = sorted(seen | {(e.kind, e.name) for e in expect})
        with self._transaction(write=True) as conn:
            revision = int(conn.execute(update(meta).where(meta.c.key == HEAD).values(value=meta.c.value + 1)
                                        .returning(meta.c.value)).scalar_one())
            current = self._revisions(conn, wanted)
            for e in expect:
                actual = current.get((e.kind, e.name))
                if (None if actual is None else actual[0]) != e.revision:
                    raise Aborted(abort_message or ABORTED_MESSAGE)  # no metadata: it would reach clients
            self._apply(conn, revision, puts, texts, deletes, current)
            audit_log.append(conn, entries, revision, rfc3339(self._clock()))
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                             {"channel": CHANNEL, "payload": str(revision)})
        return revision

    @staticmethod
    def _revisions(conn: Connection, keys: Sequence[Key]) -> dict[Key, tuple[int, int]]:
        """(revision, created_revision) of the existing records among ``keys``."""
        found: dict[Key, tuple[int, int]] = {}
        for chunk in _chunks(keys):
            query = select(records.c.kind, records.c.name, records.c.revision, records.c.created_revision)
            for row in conn.execute(query.where(tuple_(records.c.kind, records.c.name).in_(chunk))):
                found[(str(row.kind), str(row.name))] = (int(row.revision), int(row.created_revision))
        return found

    @staticmethod
    def _apply(conn: Connection, revision: int, puts: Sequence[Put], texts: Sequence[str],
               deletes: Sequence[Delete], current: Mapping[Key, tuple[int, int]]) -> None:
        inserts, updates, log = [], [], []
        for put, data in zip(puts, texts, strict=True):
            existing = current.get((put.kind, put.name))
            created = revision if existing is None else existing[1]
            row = {"data": data, "parent": put.parent, "deleted": put.deleted, "revision": revision}
            log.append({"revision": revision, "kind": put.kind, "name": put.name, "op": "put",
                        "created_revision": created, **row})
            if existing is None:
                inserts.append({"kind": put.kind, "name": put.name, "created_revision": created, **row})
            else:
                updates.append({"b_kind": put.kind, "b_name": put.name, **row})
        gone = [{"b_kind": d.kind, "b_name": d.name} for d in deletes if (d.kind, d.name) in current]
        log.extend({"revision": revision, "kind": g["b_kind"], "name": g["b_name"], "op": "delete", "data": None,
                    "parent": None, "deleted": None, "created_revision": None} for g in gone)
        match = (records.c.kind == bindparam("b_kind"), records.c.name == bindparam("b_name"))
        if inserts:
            conn.execute(records.insert(), inserts)
        if updates:
            conn.execute(update(records).where(*match), updates)
        if gone:
            conn.execute(delete(records).where(*match), gone)
        if log:
            conn.execute(changes.insert(), log)

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
