"""Migrations: the naming convention that lets a current database skip Alembic, and the skip itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from keycard.store.sql import MIGRATIONS, SqlStore, newest_migration, open_store


def _assignments(path: Path) -> dict[str, object]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: dict[str, object] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            out[target.id] = value.value
    return out


def test_every_migration_is_named_for_its_revision_in_one_line_of_descent() -> None:
    files = sorted((MIGRATIONS / "versions").glob("*.py"))
    assert files, "no migrations found"
    previous: object = None
    for path in files:
        prefix = path.name.split("_", 1)[0]
        assert len(prefix) == 4 and prefix.isdigit(), f"{path.name}: name migrations NNNN_what.py"
        found = _assignments(path)
        assert found.get("revision") == prefix, f"{path.name}: revision must be {prefix!r}"
        assert found.get("down_revision") == previous, f"{path.name}: down_revision must be {previous!r}"
        previous = prefix
    assert newest_migration() == previous


def test_fresh_database_is_migrated_and_a_current_one_is_recognised(store_url: str) -> None:
    with SqlStore(store_url) as store:
        assert store.schema_revision() is None
    with open_store(store_url, migrate=True) as store:
        assert store.schema_revision() == newest_migration()
        store.migrate()                   # nothing to do, and nothing breaks
        assert store.schema_revision() == newest_migration()


def test_opening_a_current_database_does_not_import_alembic(store_url: str) -> None:
    open_store(store_url, migrate=True).close()
    code = ("import sys; from keycard.store.sql import open_store\n"
            f"open_store({store_url!r}, migrate=True).close()\n"
            "print('alembic' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"
