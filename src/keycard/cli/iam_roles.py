"""``keycard iam roles …``: predefined and custom roles (IAM v1), and the role finder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from keycard.cli.output import Format, FormatOpt, _emit, console, err
from keycard.cli.remote import FilterOpt, LimitOpt, read_document, remote, show, show_list
from keycard.client import ApiError, Client

app = typer.Typer(help="Roles: list, describe, create, update, delete, undelete custom roles; find the smallest "
                  "role with given permissions.", no_args_is_help=True)

RoleArg = Annotated[str, typer.Argument(metavar="ROLE_ID", help="roles/NAME (predefined), or a custom role's id "
                                        "with --project/--organization (or its full name)")]
ProjectOpt = Annotated[str | None, typer.Option("--project", help="Project of the custom role")]
OrgOpt = Annotated[str | None, typer.Option("--organization", help="Organization of the custom role")]
FileOpt = Annotated[Path | None, typer.Option("--file", help="Role as YAML/JSON (IAM v1 Role: title, description, "
                                              "stage, includedPermissions)")]
TitleOpt = Annotated[str | None, typer.Option("--title")]
DescriptionOpt = Annotated[str | None, typer.Option("--description")]
StageOpt = Annotated[str | None, typer.Option("--stage", help="ALPHA, BETA, GA, DEPRECATED, DISABLED, EAP")]
PermissionsOpt = Annotated[str | None, typer.Option("--permissions", help="Comma-separated permissions")]
COLUMNS = (("NAME", "name"), ("TITLE", "title"), ("STAGE", "stage"))


def _parent(project: str | None, organization: str | None) -> str | None:
    if project and organization:
        raise ApiError(0, "INVALID_ARGUMENT", "Give --project or --organization, not both.", reason="BAD_FLAGS")
    if project:
        return f"projects/{project.removeprefix('projects/')}"
    if organization:
        return f"organizations/{organization.removeprefix('organizations/')}"
    return None


def role_path(role: str, project: str | None, organization: str | None) -> str:
    """A role's API path: /v1/roles/X, /v1/projects/P/roles/X or /v1/organizations/O/roles/X."""
    if re.match(r"^(roles|projects/[^/]+/roles|organizations/[^/]+/roles)/[^/]+$", role):
        return f"/v1/{role}"
    parent = _parent(project, organization)
    if parent is None:
        raise ApiError(0, "INVALID_ARGUMENT", f"Which role is {role!r}?", reason="BAD_ROLE",
                       hint="Use roles/NAME for a predefined role, or pass --project/--organization for a custom "
                            "role's id (or its full name projects/P/roles/ID).")
    return f"/v1/{parent}/roles/{role}"


def _split_path(role: str, project: str | None, organization: str | None) -> tuple[str, str]:
    path = role_path(role, project, organization)
    parent, _, rid = path.removeprefix("/v1/").rpartition("/roles/")
    if not parent:
        raise ApiError(0, "INVALID_ARGUMENT", "Predefined roles cannot be changed; create a custom role.",
                       reason="PREDEFINED_ROLE", hint="keycard iam roles create ID --project P --file role.yaml")
    return parent, rid


def _role_body(file: Path | None, title: str | None, description: str | None, stage: str | None,
               permissions: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if file is not None:
        data = read_document(file)
        if not isinstance(data, dict):
            raise ApiError(0, "INVALID_ARGUMENT", f"Invalid role file {file}: expected an IAM v1 Role object.",
                           reason="BAD_FILE")
        body.update({k: v for k, v in data.items() if k in ("title", "description", "stage",
                                                                "includedPermissions", "etag")})
    for key, value in (("title", title), ("description", description), ("stage", stage)):
        if value is not None:
            body[key] = value
    if permissions is not None:
        body["includedPermissions"] = [p.strip() for p in permissions.split(",") if p.strip()]
    return body


@app.command("list")
@remote
def list_(client: Client, project: ProjectOpt = None, organization: OrgOpt = None,
          show_deleted: Annotated[bool, typer.Option("--show-deleted")] = False, fmt: FormatOpt = Format.table,
          filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Predefined roles, or the custom roles of a project or organization."""
    parent = _parent(project, organization)
    path = f"/v1/{parent}/roles" if parent else "/v1/roles"
    show_list(client.pages(path, "roles", params={"showDeleted": show_deleted or None, "pageSize": 1000}),
              fmt, COLUMNS, filter_, limit=limit)


@app.command("describe")
@remote
def describe(client: Client, role: RoleArg, project: ProjectOpt = None, organization: OrgOpt = None,
             fmt: FormatOpt = Format.table) -> None:
    """One role, with its permissions."""
    show(client.get(role_path(role, project, organization)), fmt)


@app.command("create")
@remote
def create(client: Client, role: RoleArg, project: ProjectOpt = None, organization: OrgOpt = None,
           file: FileOpt = None, title: TitleOpt = None, description: DescriptionOpt = None, stage: StageOpt = None,
           permissions: PermissionsOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Create a custom role (from --file, e.g. `keycard iam roles find … --custom` output, or flags)."""
    parent, rid = _split_path(role, project, organization)
    body = _role_body(file, title, description, stage, permissions)
    body.pop("etag", None)
    out = client.post(f"/v1/{parent}/roles", {"roleId": rid, "role": body})
    show(out, fmt, f"Created role [{out.get('name', rid)}] with {len(out.get('includedPermissions', []))} "
                   "permissions.")


@app.command("update")
@remote
def update(client: Client, role: RoleArg, project: ProjectOpt = None, organization: OrgOpt = None,
           file: FileOpt = None, title: TitleOpt = None, description: DescriptionOpt = None, stage: StageOpt = None,
           permissions: PermissionsOpt = None,
           add_permissions: Annotated[str | None, typer.Option("--add-permissions")] = None,
           remove_permissions: Annotated[str | None, typer.Option("--remove-permissions")] = None,
           fmt: FormatOpt = Format.table) -> None:
    """Change a custom role (its etag guards against a concurrent change: 409, exit 4)."""
    parent, rid = _split_path(role, project, organization)
    path = f"/v1/{parent}/roles/{rid}"
    body = _role_body(file, title, description, stage, permissions)
    if add_permissions or remove_permissions:
        current = client.get(path)
        perms = list(body.get("includedPermissions", current.get("includedPermissions", [])))
        perms += [p.strip() for p in (add_permissions or "").split(",") if p.strip() and p.strip() not in perms]
        gone = {p.strip() for p in (remove_permissions or "").split(",")}
        body["includedPermissions"] = [p for p in perms if p not in gone]
        body.setdefault("etag", current.get("etag"))
    mask = ",".join(k for k in ("title", "description", "stage", "includedPermissions") if k in body)
    if not mask:
        raise ApiError(0, "INVALID_ARGUMENT", "Nothing to update.", reason="NO_CHANGE",
                       hint="Pass --file, --title, --description, --stage, --permissions, --add-permissions or "
                            "--remove-permissions.")
    out = client.patch(path, body, updateMask=mask)
    show(out, fmt, f"Updated role [{out.get('name', rid)}].")


@app.command("delete")
@remote
def delete(client: Client, role: RoleArg, project: ProjectOpt = None, organization: OrgOpt = None,
           fmt: FormatOpt = Format.table) -> None:
    """Delete a custom role (its bindings stop granting; undelete within 7 days)."""
    parent, rid = _split_path(role, project, organization)
    out = client.delete(f"/v1/{parent}/roles/{rid}")
    show(out, fmt, f"Deleted role [{out.get('name', rid)}]. Undo with: keycard iam roles undelete {rid} "
                   f"--{parent.split('/')[0][:-1]} {parent.split('/')[1]}")


@app.command("undelete")
@remote
def undelete(client: Client, role: RoleArg, project: ProjectOpt = None, organization: OrgOpt = None,
             fmt: FormatOpt = Format.table) -> None:
    """Restore a deleted custom role."""
    parent, rid = _split_path(role, project, organization)
    out = client.post(f"/v1/{parent}/roles/{rid}:undelete")
    show(out, fmt, f"Restored role [{out.get('name', rid)}].")


# ------------------------------------------------------------------------------------------ finder
def find_predefined(permissions: list[str], catalog: Path | None = None) -> list[dict[str, Any]]:
    """Predefined roles holding every permission, smallest first, with how many more they grant."""
    from keycard.engine.engine import Engine
    eng = Engine(catalog=str(catalog) if catalog else None)
    wanted = set(permissions)
    found = eng.find_roles(permissions, predefined_only=True)
    return [{"name": r.name, "title": r.title, "stage": r.stage, "permissions": len(r.permissions),
             "extraPermissions": len(r.permissions - wanted)} for r in found]


def custom_role(permissions: list[str], role_id: str | None) -> dict[str, Any]:
    """An IAM v1 Role with exactly ``permissions``, ready for `keycard iam roles create --file`."""
    perms = sorted(dict.fromkeys(permissions))
    rid = role_id or re.sub(r"[^A-Za-z0-9_.]", "_", "custom." + perms[0].replace(".", "_"))[:64]
    return {"title": role_id or f"Custom: {', '.join(perms)[:90]}",
            "description": f"Exactly {len(perms)} permission(s), proposed by keycard iam roles find.",
            "stage": "GA", "includedPermissions": perms, "name": rid}


@app.command("find")
def find(permissions: Annotated[list[str], typer.Argument(metavar="PERMISSION...", help="Permissions the role "
                                                          "must contain, e.g. ml.models.get")],
         custom: Annotated[bool, typer.Option("--custom", help="Propose a custom role with exactly these "
                                              "permissions (IAM v1 Role; --format yaml/json writes the file)")]
         = False,
         role_id: Annotated[str | None, typer.Option("--role-id", help="Id of the proposed custom role")] = None,
         catalog: Annotated[Path | None, typer.Option("--catalog", help="Extra predefined roles (gcloud role "
                                                      "JSON array), e.g. Google's full catalog")] = None,
         limit: Annotated[int, typer.Option("--limit", help="At most this many roles")] = 10,
         fmt: FormatOpt = Format.table) -> None:
    """Predefined roles containing every PERMISSION, smallest first, with the count of extra permissions."""
    from keycard.errors import KeycardError
    try:
        found = find_predefined(permissions, catalog)[:max(limit, 0)]
    except KeycardError as e:
        err.print(f"[red]ERROR:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    if custom:
        role = custom_role(permissions, role_id)
        rid = role.pop("name")
        if fmt is not Format.table:
            _emit(role, fmt)
            return
        import yaml
        console.print(yaml.safe_dump(role, sort_keys=False).rstrip(), highlight=False, markup=False)
        err.print(f"Save it and create it with: keycard iam roles find {' '.join(permissions)} --custom "
                  f"--format yaml > role.yaml && keycard iam roles create {rid} --project PROJECT --file role.yaml",
                  highlight=False)
        return
    if fmt is not Format.table:
        _emit(found, fmt)
    elif not found:
        err.print("No predefined role holds all of them. Propose a custom role with --custom.", highlight=False)
    if not found:
        raise typer.Exit(3)
    if fmt is not Format.table:
        return
    table = Table("role", "title", "permissions", "extra")
    for r in found:
        table.add_row(r["name"], r["title"], str(r["permissions"]), str(r["extraPermissions"]))
    console.print(table)
