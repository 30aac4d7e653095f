"""``keycard resource-manager folders …`` (Cloud Resource Manager v3 folders, gcloud's verbs)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keycard.cli.containers import Container, FolderOpt, OrgOpt, add_lifecycle_commands, operation_result, parent_of
from keycard.cli.output import Format, FormatOpt
from keycard.cli.policy import PolicyTarget, add_policy_commands
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import ApiError, Client

app = typer.Typer(help="Cloud Resource Manager: folders.", no_args_is_help=True)
folders = typer.Typer(help="Folders: create, list, describe, delete, move; their allow policies.",
                      no_args_is_help=True)
app.add_typer(folders, name="folders")

COLUMNS = (("DISPLAY_NAME", "displayName"), ("PARENT_NAME", "parent"), ("ID", "name"), ("STATE", "state"))


def _id(folder: str) -> str:
    return folder.removeprefix("folders/")


@folders.command("create")
@remote
def create(client: Client, display_name: Annotated[str, typer.Option("--display-name", help="Folder name")],
           folder: FolderOpt = None, organization: OrgOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Create a folder under a folder or the organization."""
    parent = parent_of(folder, organization)
    if parent is None:
        raise ApiError(0, "INVALID_ARGUMENT", "Where should the folder go?", reason="NO_PARENT",
                       hint="Pass --folder FOLDER_ID or --organization ORG_ID.")
    out: Any = operation_result(client.post("/v3/folders", {"parent": parent, "displayName": display_name}))
    show(out, fmt, f"Created folder [{out.get('name', '')}] ({display_name}) in {parent}.")


@folders.command("list")
@remote
def list_(client: Client, folder: FolderOpt = None, organization: OrgOpt = None, fmt: FormatOpt = Format.table,
          filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Folders directly under a folder or organization (without either: every folder you can see)."""
    parent = parent_of(folder, organization)
    items = client.pages("/v3/folders", "folders", params={"parent": parent}) if parent else \
        client.pages("/v3/folders:search", "folders")
    show_list(items, fmt, COLUMNS, filter_, limit=limit)


add_lifecycle_commands(folders, Container("folder", "folders", "FOLDER_ID", "Folder id (the number)",
                                          "Mark an empty folder for deletion.", ident=_id))
add_policy_commands(folders, PolicyTarget("folder", "FOLDER_ID", lambda f, _: f"/v3/folders/{_id(f)}"))
