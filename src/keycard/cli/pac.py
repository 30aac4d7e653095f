"""Policy as code: ``keycard plan``, ``keycard apply``, ``keycard export`` (docs/policy-as-code.md)."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from keycard.cli.output import EXIT_BAD_INPUT, EXIT_CONFLICT, EXIT_DENIED, Format, FormatOpt, _emit, console, err
from keycard.cli.remote import Client, remote
from keycard.client import ApiError
from keycard.pac.document import DocumentError, read_documents
from keycard.pac.export import to_document
from keycard.pac.live import Live, caller_principal, read_live
from keycard.pac.model import State
from keycard.pac.plan import Plan, make_plan
from keycard.pac.steps import ConcurrentChange, Context

FilesOpt = Annotated[list[Path], typer.Option("-f", "--file", help="Policy document (YAML or JSON) or a directory "
                                              "of them; repeatable")]
OrgOpt = Annotated[str | None, typer.Option("--organization", help="Organization number (default: the one the "
                                            "caller sees)")]
EXIT_LOCKOUT = EXIT_DENIED


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
    app.command("apply")(apply)
    app.command("export")(export)


def _read(files: list[Path]) -> State:
    try:
        return read_documents(files)
    except DocumentError as e:
        err.print(f"[red]error:[/] {e.message}", highlight=False, markup=False)
        err.print("Nothing was applied. Fix the document and run `keycard plan` again.", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _plan(client: Client, files: list[Path], organization: str | None) -> tuple[Live, Plan]:
    desired = _read(files)
    with err.status("Reading the server's current state…"):
        live = read_live(client, organization=organization)
        caller = caller_principal(client)
    try:
        return live, make_plan(live, desired, caller=caller)
    except DocumentError as e:
        err.print(f"[red]error:[/] {e.message}", highlight=False, markup=False)
        err.print("Nothing was applied.", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _show(p: Plan, fmt: Format) -> None:
    if fmt is not Format.table:
        _emit(p.to_json(), fmt)
        return
    if not p.steps:
        console.print("[green]No changes.[/] The server matches the document.", highlight=False)
        return
    t = Table("action", "kind", "target", "detail", "declared at", title="Resource changes (drift included)")
    colours = {"create": "green", "add": "green", "update": "yellow", "move": "yellow", "set": "yellow",
               "remove": "red", "delete": "red"}
    for s in p.steps:
        c = colours.get(s.action, "white")
        t.add_row(f"[{c}]{s.action}[/]", s.kind, s.target, s.detail, str(s.where) if s.where.file else "")
    console.print(t)
    if p.access:
        grouped: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for a in p.access:
            grouped[(a.change, a.principal, a.resource)].append(a.permission + (" (conditional)" if a.conditional
                                                                                else ""))
        t = Table("change", "principal", "resource", "permissions", title="Access that would change")
        for (change, who, res), perms in grouped.items():
            shown = ", ".join(sorted(perms)[:6]) + (f" … (+{len(perms) - 6}, see --format=json)"
                                                     if len(perms) > 6 else "")
            t.add_row("[red]lost[/]" if change == "lost" else "[green]gained[/]", who, res,
                      f"{len(perms)}: {shown}")
        console.print(t)
    else:
        console.print("No access on existing resources changes.", highlight=False)
    if p.new_grants:
        console.print(f"New resources get {len(p.new_grants)} role grant(s) of their own.", highlight=False)
    for lock in p.lockouts:
        console.print(f"[red]LOCKOUT:[/] {lock}. Apply refuses this unless --allow-lockout.", highlight=False)
    lost = sum(1 for a in p.access if a.change == "lost")
    console.print(f"Plan: {len(p.steps)} change(s); {len(p.access) - lost} access gained, {lost} lost "
                  "(principal, permission, resource).", highlight=False)


@remote
def plan(client: Client, files: FilesOpt, organization: OrgOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Show what apply would change: resources (drift included) and every access gained or lost."""
    _live, p = _plan(client, files, organization)
    _show(p, fmt)


@remote
def apply(client: Client, files: FilesOpt, organization: OrgOpt = None,
          allow_lockout: Annotated[bool, typer.Option("--allow-lockout", help="Apply even if a node would be "
                                                      "left with no holder of its setIamPolicy permission")]
          = False,
          fmt: FormatOpt = Format.table) -> None:
    """Make the server match the documents (idempotent; a concurrent change makes it stop cleanly)."""
    live, p = _plan(client, files, organization)
    if fmt is Format.table:
        _show(p, fmt)
    if p.lockouts and not allow_lockout:
        for lock in p.lockouts:
            err.print(f"[red]error:[/] refusing to apply: {lock}, which would lock everyone out of it.",
                      highlight=False)
        err.print("Nothing was applied. Keep a holder of setIamPolicy in the document, or pass --allow-lockout "
                  "if you mean it.", highlight=False)
        raise typer.Exit(EXIT_LOCKOUT)
    ctx = Context(client, live, allow_lockout=allow_lockout)
    done = 0
    with Progress(TextColumn("[bold]apply[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), console=err, transient=False) as bar:
        task = bar.add_task("", total=len(p.steps))
        for s in p.steps:
            bar.update(task, description=f"{s.action} {s.kind} {s.target}")
            try:
                s.run(ctx)
            except ConcurrentChange as e:
                bar.stop()
                err.print(f"[red]error:[/] {e} ({done} of {len(p.steps)} changes were applied before.)",
                          highlight=False)
                raise typer.Exit(EXIT_CONFLICT) from None
            except ApiError as e:
                bar.stop()
                err.print(f"[red]error:[/] {s.action} {s.kind} {s.target}: ({e.status}) {e.message} "
                          f"({done} of {len(p.steps)} changes were applied before; run `keycard plan` to see "
                          "what is left.)", highlight=False)
                if e.reason == "SELF_LOCKOUT":
                    err.print("→ The change removes your own setIamPolicy: keep it in the document, or pass "
                              "--allow-lockout if you mean it.", highlight=False)
                elif e.hint:
                    err.print(f"→ {e.hint}", highlight=False)
                raise typer.Exit(EXIT_CONFLICT if e.http_status == 409 else EXIT_BAD_INPUT) from None
            done += 1
            bar.advance(task)
    lost = sum(1 for a in p.access if a.change == "lost")
    summary = {"applied": done, "accessGained": len(p.access) - lost, "accessLost": lost,
               "lockoutsOverridden": p.lockouts if allow_lockout else []}
    if fmt is not Format.table:
        _emit({**p.to_json(), "summary": summary}, fmt)
        return
    console.print(f"[green]Applied[/] {done} change(s): {summary['accessGained']} access gained, "
                  f"{lost} lost." if done else "[green]No changes.[/] Nothing to apply.", highlight=False)


@remote
def export(client: Client, out: Annotated[Path | None, typer.Option("-f", "--file", help="Where to write "
                                                                     "(default: standard output)")] = None,
           organization: OrgOpt = None,
           project: Annotated[str | None, typer.Option("--project", help="Only this project (id), its "
                                                       "service accounts and roles")] = None,
           fmt: Annotated[Format, typer.Option("--format", help="yaml (default) or json")] = Format.yaml) -> None:
    """Write the server's current state as a policy document (the format plan and apply read)."""
    with Progress(TextColumn("[bold]export[/]"), TextColumn("{task.description}"), console=err,
                  transient=True) as bar:
        task = bar.add_task("")
        live = read_live(client, organization=organization, project=project,
                         progress=lambda m: bar.update(task, description=m))
    doc = to_document(live.state)
    if fmt is Format.json:
        import json
        text = json.dumps(doc, indent=2) + "\n"
    else:
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    if out is None:
        sys.stdout.write(text)
        return
    out.write_text(text, encoding="utf-8")
    err.print(f"Wrote {out}: {len(live.state.nodes)} resources, {len(live.state.groups)} groups, "
              f"{sum(1 for r in live.state.roles.values() if not r.deleted)} custom roles.", highlight=False)
