"""``keycard iam deny-policies …`` (IAM v2 deny policies, attached to an organization, folder or project)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from keycard.cli.output import Format, FormatOpt
from keycard.cli.remote import FilterOpt, read_document, remote, show, show_list
from keycard.client import ApiError, Client

app = typer.Typer(help="Deny policies: create, list, describe, update, delete.", no_args_is_help=True)

PolicyArg = Annotated[str, typer.Argument(metavar="POLICY_ID")]
AttachOpt = Annotated[str | None, typer.Option("--attachment-point", help="e.g. cloudresourcemanager.googleapis.com"
                                               "/projects/P (or use --project/--folder/--organization)")]
ProjectOpt = Annotated[str | None, typer.Option("--project")]
FolderOpt = Annotated[str | None, typer.Option("--folder")]
OrgOpt = Annotated[str | None, typer.Option("--organization")]
FileOpt = Annotated[Path, typer.Option("--policy-file", help="Deny policy as YAML/JSON ({displayName, rules: "
                                       "[{denyRule: ...}]})")]
COLUMNS = (("NAME", "name"), ("DISPLAY_NAME", "displayName"), ("RULES", "rules.denyRule.deniedPermissions"),
           ("ETAG", "etag"))


def _base(attachment: str | None, project: str | None, folder: str | None, organization: str | None) -> str:
    given = [x for x in (attachment, project and f"projects/{project}", folder and f"folders/{folder}",
                         organization and f"organizations/{organization}") if x]
    if len(given) != 1:
        raise ApiError(0, "INVALID_ARGUMENT", "Where is the deny policy attached?", reason="NO_ATTACHMENT",
                       hint="Pass exactly one of --attachment-point, --project, --folder or --organization.")
    att = given[0]
    if not att.startswith("cloudresourcemanager.googleapis.com/"):
        att = f"cloudresourcemanager.googleapis.com/{att}"
    return f"/v2/policies/{quote(att, safe='')}/denypolicies"


def _done(op: Any) -> Any:
    if isinstance(op, dict) and "response" in op:
        return op["response"]
    return op


@app.command("create")
@remote
def create(client: Client, policy_id: PolicyArg, policy_file: FileOpt, attachment_point: AttachOpt = None,
           project: ProjectOpt = None, folder: FolderOpt = None, organization: OrgOpt = None,
           fmt: FormatOpt = Format.table) -> None:
    """Create a deny policy."""
    body = read_document(policy_file)
    out = _done(client.post(_base(attachment_point, project, folder, organization), body, policyId=policy_id))
    show(out, fmt, f"Created deny policy [{out.get('name', policy_id) if isinstance(out, dict) else policy_id}].")


@app.command("list")
@remote
def list_(client: Client, attachment_point: AttachOpt = None, project: ProjectOpt = None, folder: FolderOpt = None,
          organization: OrgOpt = None, fmt: FormatOpt = Format.table, filter_: FilterOpt = None) -> None:
    """Deny policies attached to a node."""
    show_list(client.pages(_base(attachment_point, project, folder, organization), "policies"), fmt, COLUMNS,
              filter_)


@app.command("describe")
@remote
def describe(client: Client, policy_id: PolicyArg, attachment_point: AttachOpt = None, project: ProjectOpt = None,
             folder: FolderOpt = None, organization: OrgOpt = None, fmt: FormatOpt = Format.table) -> None:
    """One deny policy."""
    show(client.get(f"{_base(attachment_point, project, folder, organization)}/{policy_id}"), fmt)


@app.command("update")
@remote
def update(client: Client, policy_id: PolicyArg, policy_file: FileOpt, attachment_point: AttachOpt = None,
           project: ProjectOpt = None, folder: FolderOpt = None, organization: OrgOpt = None,
           fmt: FormatOpt = Format.table) -> None:
    """Replace a deny policy (its etag, if present in the file, must be current)."""
    path = f"{_base(attachment_point, project, folder, organization)}/{policy_id}"
    out = _done(client.request("PUT", path, json=read_document(policy_file)))
    show(out, fmt, f"Updated deny policy [{policy_id}].")


@app.command("delete")
@remote
def delete(client: Client, policy_id: PolicyArg, attachment_point: AttachOpt = None, project: ProjectOpt = None,
           folder: FolderOpt = None, organization: OrgOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Delete a deny policy."""
    out = _done(client.delete(f"{_base(attachment_point, project, folder, organization)}/{policy_id}"))
    show(out, fmt, f"Deleted deny policy [{policy_id}].")
