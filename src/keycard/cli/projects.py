"""``keycard projects …`` (Cloud Resource Manager v3 projects, gcloud's verbs)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keycard.cli.containers import (
    Container,
    FolderOpt,
    OrgOpt,
    add_lifecycle_commands,
    operation_result,
    parent_of,
)
from keycard.cli.output import Format, FormatOpt
from keycard.cli.policy import PolicyTarget, add_policy_commands
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import ApiError, Client

app = typer.Typer(help="Projects: create, list, describe, delete, move; their allow policies.", no_args_is_help=True)

ProjectArg = Annotated[str, typer.Argument(metavar="PROJECT_ID", help="Project id (or number)")]
COLUMNS = (("PROJECT_ID", "projectId"), ("NAME", "displayName"), ("PROJECT_NUMBER", "name"),
           ("PARENT", "parent"), ("STATE", "state"))


@app.command("create")
@remote
def create(client: Client, project_id: ProjectArg, name: Annotated[str | None, typer.Option(
        "--name", help="Display name")] = None, folder: FolderOpt = None, organization: OrgOpt = None,
           labels: Annotated[list[str] | None, typer.Option("--labels", help="KEY=VALUE (repeatable)")] = None,
           fmt: FormatOpt = Format.table) -> None:
    """Create a project under a folder or the organization."""
    body: dict[str, Any] = {"projectId": project_id}
    parent = parent_of(folder, organization)
    if parent is None:
        orgs = client.get("/v3/organizations:search").get("organizations", [])
        if len(orgs) != 1:
            raise ApiError(0, "INVALID_ARGUMENT", "Where should the project go?", reason="NO_PARENT",
                           hint="Pass --folder FOLDER_ID or --organization ORG_ID.")
        parent = orgs[0]["name"]
    body["parent"] = parent
    if name:
        body["displayName"] = name
    if labels:
        body["labels"] = dict(kv.split("=", 1) for kv in labels if "=" in kv)
    out = operation_result(client.post("/v3/projects", body))
    show(out, fmt, f"Created project [{project_id}] in {parent}.")


@app.command("list")
@remote
def list_(client: Client, fmt: FormatOpt = Format.table, filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Projects you can see."""
    show_list(client.pages("/v3/projects:search", "projects"), fmt, COLUMNS, filter_, limit=limit)


add_lifecycle_commands(app, Container(
    "project", "projects", "PROJECT_ID", "Project id (or number)",
    "Mark a project for deletion (undelete brings it back).",
    after_delete=lambda p: f" Bring it back with: keycard projects undelete {p}"))
add_policy_commands(app, PolicyTarget("project", "PROJECT_ID", lambda p, _: f"/v3/projects/{p}"))
