"""What ``keycard projects`` and ``keycard resource-manager folders`` share (Cloud Resource Manager v3).

Projects and folders are both containers of the hierarchy: the same ``--folder`` / ``--organization`` parent
options, long-running operations that end in the resource, and the same four verbs on ``/v3/{collection}/{id}``
(describe, delete, undelete, move), which :func:`add_lifecycle_commands` registers on a group.
"""

# No `from __future__ import annotations`: the commands' Annotated hints are built per group at run time.

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from keycard.cli.output import Format, FormatOpt
from keycard.cli.remote import remote, show
from keycard.client import ApiError, Client

__all__ = ["Container", "FolderOpt", "OrgOpt", "add_lifecycle_commands", "operation_result", "parent_of"]

FolderOpt = Annotated[str | None, typer.Option("--folder", help="Parent folder id")]
OrgOpt = Annotated[str | None, typer.Option("--organization", help="Parent organization id")]


def parent_of(folder: str | None, organization: str | None) -> str | None:
    """``--folder`` / ``--organization`` → ``folders/N`` / ``organizations/N`` (at most one)."""
    if folder and organization:
        raise ApiError(0, "INVALID_ARGUMENT", "Give --folder or --organization, not both.", reason="BAD_FLAGS")
    if folder:
        return folder if folder.startswith("folders/") else f"folders/{folder}"
    if organization:
        return organization if organization.startswith("organizations/") else f"organizations/{organization}"
    return None


def operation_result(op: Any) -> Any:
    """A Cloud Resource Manager Operation → its response (or the error it ended with)."""
    if isinstance(op, dict) and op.get("error"):
        e = op["error"]
        raise ApiError(0, str(e.get("status", "UNKNOWN")), str(e.get("message", "operation failed")))
    return op.get("response", op) if isinstance(op, dict) else op


@dataclass(frozen=True)
class Container:
    """How one kind of container is named on the command line and on the server."""

    noun: str                       # "project", "folder"
    collection: str                 # its path segment: /v3/{collection}/{id}
    metavar: str                    # "PROJECT_ID", ...
    arg_help: str                   # the help of that argument
    delete_help: str                # the help of its delete command
    ident: Callable[[str], str] = lambda s: s   # the argument → the id in the path and in the messages
    after_delete: Callable[[str], str] = lambda i: ""   # the id → what follows "Deleted {noun} [{id}]."


def add_lifecycle_commands(app: typer.Typer, c: Container) -> None:
    """Register describe, delete, undelete and move of ``c`` on ``app``."""
    Ident = Annotated[str, typer.Argument(metavar=c.metavar, help=c.arg_help)]

    def path(ident: str) -> str:
        return f"/v3/{c.collection}/{c.ident(ident)}"

    @app.command("describe", help=f"One {c.noun}.")
    @remote
    def describe(client: Client, ident: Ident, fmt: FormatOpt = Format.table) -> None:
        show(client.get(path(ident)), fmt)

    @app.command("delete", help=c.delete_help)
    @remote
    def delete(client: Client, ident: Ident, fmt: FormatOpt = Format.table) -> None:
        out = operation_result(client.delete(path(ident)))
        i = c.ident(ident)
        show(out, fmt, f"Deleted {c.noun} [{i}].{c.after_delete(i)}")

    @app.command("undelete", help=f"Restore a {c.noun} marked for deletion.")
    @remote
    def undelete(client: Client, ident: Ident, fmt: FormatOpt = Format.table) -> None:
        out = operation_result(client.post(f"{path(ident)}:undelete"))
        show(out, fmt, f"Restored {c.noun} [{c.ident(ident)}].")

    @app.command("move", help=f"Move a {c.noun} under another folder or the organization.")
    @remote
    def move(client: Client, ident: Ident, folder: FolderOpt = None, organization: OrgOpt = None,
             fmt: FormatOpt = Format.table) -> None:
        parent = parent_of(folder, organization)
        if parent is None:
            raise ApiError(0, "INVALID_ARGUMENT", "Where to?", reason="NO_PARENT",
                           hint="Pass --folder FOLDER_ID or --organization ORG_ID.")
        out = operation_result(client.post(f"{path(ident)}:move", {"destinationParent": parent}))
        show(out, fmt, f"Moved {c.noun} [{c.ident(ident)}] to {parent}.")
