"""The ``keycard`` command line (engine commands; server verbs arrive with the server)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from keycard.engine.engine import Engine
from keycard.errors import KeycardError

app = typer.Typer(help="keycard: Google Cloud IAM, runnable anywhere.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console(soft_wrap=True)
err = Console(stderr=True)

EXIT_OK, EXIT_DENIED, EXIT_BAD_INPUT = 0, 1, 2


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


FormatOpt = Annotated[Format, typer.Option("--format", help="Output format: table (for people), json or yaml.")]
AssetsOpt = Annotated[Path | None, typer.Option("--assets", help="Cloud Asset Inventory export (NDJSON). "
                                                "Without it: the built-in demo organization.")]
GroupsOpt = Annotated[Path | None, typer.Option("--groups", help="JSON object {group email: [members]}.")]
DenyOpt = Annotated[Path | None, typer.Option("--deny-policies", help="JSON list of {attachmentPoint, policy}.")]
RolesOpt = Annotated[Path | None, typer.Option("--roles", help="JSON list of custom roles (IAM v1 JSON).")]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Extra predefined roles (gcloud role JSON "
                                                 "array), e.g. Google's full catalog.")]
TimeOpt = Annotated[str | None, typer.Option("--time", help="request.time for IAM Conditions (RFC 3339).")]


def _emit(data: Any, fmt: Format) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _read_json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise KeycardError(f"Cannot read {path}: {e}. Pass a readable JSON file.") from None


def _engine(assets: Path | None, groups: Path | None, deny: Path | None, roles: Path | None,
            catalog: Path | None) -> Engine:
    if assets is None:
        from keycard.demo import demo_inputs
        inputs = demo_inputs()
        return Engine.load(inputs["assets"], groups=inputs["groups"], deny_policies=inputs["deny_policies"],
                           catalog=str(catalog) if catalog else None)
    return Engine.load(str(assets), groups=_read_json(groups), deny_policies=_read_json(deny),
                       roles=_read_json(roles), catalog=str(catalog) if catalog else None, unknown_roles="ignore")


def _time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise KeycardError(f"Invalid --time {value!r}: use RFC 3339, e.g. 2026-11-23T10:00:00Z.") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@app.command()
def demo(fmt: FormatOpt = Format.table) -> None:
    """Show troubleshooter-style decisions on the built-in demo organization."""
    from keycard.demo import DEMO_QUERIES, TIME, demo_engine
    eng = demo_engine()
    decisions = [eng.check(p, perm, r, time=TIME) for p, perm, r in DEMO_QUERIES]
    if fmt is not Format.table:
        _emit([d.to_json() for d in decisions], fmt)
        return
    console.print(f"[bold]keycard demo[/]: organization example.com — {eng.resource_count} resources, "
                  f"{eng.binding_count} bindings, request.time {TIME.isoformat()}\n")
    for d in decisions:
        colour = "green" if d.allowed else "red"
        console.rule(f"[{colour}]{d.outcome}[/] {d.principal} · {d.permission}")
        console.print(str(d), highlight=False)
        if not d.allowed and d.deny is None:
            roles = eng.find_roles([d.permission], predefined_only=True)[:1]
            if roles:
                target = d.resource
                console.print(f"[yellow]To grant it:[/] the smallest predefined role is [bold]{roles[0].name}[/] "
                              f"({len(roles[0].permissions)} permissions) on {target}", highlight=False)
        console.print()
    console.print("Try: [bold].venv/bin/keycard check user:carol@example.com ml.models.get "
                  f"{decisions[0].resource}[/]", highlight=False)


@app.command()
def check(principal: Annotated[str, typer.Argument(help="user:EMAIL, serviceAccount:EMAIL, ... or allUsers")],
          permission: Annotated[str, typer.Argument(help="e.g. ml.models.get")],
          resource: Annotated[str, typer.Argument(help="full resource name, e.g. //ml.googleapis.com/...")],
          assets: AssetsOpt = None, groups: GroupsOpt = None, deny_policies: DenyOpt = None,
          roles: RolesOpt = None, catalog: CatalogOpt = None, time: TimeOpt = None,
          fmt: FormatOpt = Format.table) -> None:
    """Decide one request and explain it. Exit code 0 = granted, 1 = denied, 2 = bad input."""
    eng = _engine(assets, groups, deny_policies, roles, catalog)
    d = eng.check(None if principal == "allUsers" else principal, permission, resource, time=_time(time))
    if fmt is Format.table:
        console.print(str(d), highlight=False)
    else:
        _emit(d.to_json(), fmt)
    raise typer.Exit(EXIT_OK if d.allowed else EXIT_DENIED)


@app.command("find-roles")
def find_roles(permissions: Annotated[list[str], typer.Argument(help="permissions the role must contain")],
               catalog: CatalogOpt = None, limit: int = 10, fmt: FormatOpt = Format.table) -> None:
    """Roles that contain every given permission, smallest first."""
    eng = Engine(catalog=str(catalog) if catalog else None)
    found = eng.find_roles(permissions)[:limit]
    if fmt is not Format.table:
        _emit([{"name": r.name, "title": r.title, "permissions": len(r.permissions)} for r in found], fmt)
        return
    table = Table("role", "title", "permissions")
    for r in found:
        table.add_row(r.name, r.title, str(len(r.permissions)))
    console.print(table)


def main() -> None:
    try:
        app()
    except KeycardError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
