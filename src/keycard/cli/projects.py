"""``keycard projects …`` (Cloud Resource Manager v3 projects, gcloud's verbs)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keycard.cli.output import Format, FormatOpt
from keycard.cli.policy import PolicyTarget, add_policy_commands
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import ApiError, Client

app = typer.Typer(help="Projects: create, list, describe, delete, move; their allow policies.", no_args_is_help=True)

ProjectArg = Annotated[str, typer.Argument(metavar="PROJECT_ID", help="Project id (or number)")]
COLUMNS = (("PROJECT_ID", "projectId"), ("NAME", "displayName"), ("PROJECT_NUMBER", "name"),
           ("PARENT", "parent"), ("STATE", "state"))


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


FolderOpt = Annotated[str | None, typer.Option("--folder", help="Parent folder id")]
OrgOpt = Annotated[str | None, typer.Option("--organization", help="Parent organization id")]


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


@app.command("describe")
@remote
def describe(client: Client, project_id: ProjectArg, fmt: FormatOpt = Format.table) -> None:
    """One project."""
    show(client.get(f"/v3/projects/{project_id}"), fmt)


@app.command("delete")
@remote
def delete(client: Client, project_id: ProjectArg, fmt: FormatOpt = Format.table) -> None:
    """Mark a project for deletion (undelete brings it back)."""
    out = operation_result(client.delete(f"/v3/projects/{project_id}"))
    show(out, fmt, f"Deleted project [{project_id}]. Bring it back with: keycard projects undelete {project_id}")


@app.command("undelete")
@remote
def undelete(client: Client, project_id: ProjectArg, fmt: FormatOpt = Format.table) -> None:
    """Restore a project marked for deletion."""
    out = operation_result(client.post(f"/v3/projects/{project_id}:undelete"))
    show(out, fmt, f"Restored project [{project_id}].")


@app.command("move")
@remote
def move(client: Client, project_id: ProjectArg, folder: FolderOpt = None, organization: OrgOpt = None,
         fmt: FormatOpt = Format.table) -> None:
    """Move a project under another folder or the organization."""
    parent = parent_of(folder, organization)
    if parent is None:
        raise ApiError(0, "INVALID_ARGUMENT", "Where to?", reason="NO_PARENT",
                       hint="Pass --folder FOLDER_ID or --organization ORG_ID.")
    out = operation_result(client.post(f"/v3/projects/{project_id}:move", {"destinationParent": parent}))
    show(out, fmt, f"Moved project [{project_id}] to {parent}.")


add_policy_commands(app, PolicyTarget("project", "PROJECT_ID", lambda p, _: f"/v3/projects/{p}"))
