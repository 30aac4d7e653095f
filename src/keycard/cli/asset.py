"""``keycard asset …`` (Cloud Asset API v1, gcloud's verbs) and ``keycard import --cai`` (local admin path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from keycard.cli.output import Format, FormatOpt, _emit, console, err
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import ApiError, Client

app = typer.Typer(help="Cloud Asset Inventory: who has access to what, searches, exports.", no_args_is_help=True)

OrgOpt = Annotated[str | None, typer.Option("--organization", help="Scope: organization id")]
FolderOpt = Annotated[str | None, typer.Option("--folder", help="Scope: folder id")]
ProjectOpt = Annotated[str | None, typer.Option("--project", help="Scope: project id or number")]
ScopeOpt = Annotated[str | None, typer.Option("--scope", help="Scope: organizations/O, folders/F or projects/P")]


def _scope(scope: str | None, organization: str | None, folder: str | None, project: str | None,
           client: Client) -> str:
    given = [s for s in (scope, organization and f"organizations/{organization.removeprefix('organizations/')}",
                         folder and f"folders/{folder.removeprefix('folders/')}",
                         project and f"projects/{project.removeprefix('projects/')}") if s]
    if len(given) > 1:
        raise ApiError(0, "INVALID_ARGUMENT", "Give one of --scope, --organization, --folder, --project.",
                       reason="BAD_FLAGS")
    if given:
        return str(given[0])
    orgs = client.get("/v3/organizations:search").get("organizations", [])
    if len(orgs) != 1:
        raise ApiError(0, "INVALID_ARGUMENT", "Which scope?", reason="NO_SCOPE",
                       hint="Pass --organization ORG_ID, --folder FOLDER_ID or --project PROJECT_ID.")
    return str(orgs[0]["name"])


def _rows(analysis: dict[str, Any], via: str = "") -> list[dict[str, Any]]:
    out = []
    for r in analysis.get("analysisResults", []):
        for acl in r.get("accessControlLists", []):
            out.append({
                "attachedResource": r["attachedResourceFullName"], "role": r["iamBinding"]["role"],
                "identities": [i["name"] for i in r.get("identityList", {}).get("identities", [])],
                "accesses": [a.get("permission") or a.get("role") for a in acl.get("accesses", [])],
                "resources": [x["fullResourceName"] for x in acl.get("resources", [])],
                "condition": acl.get("conditionEvaluation", {}).get("evaluationValue", ""),
                "via": via})
    return out


@app.command("analyze-iam-policy")
@remote
def analyze_iam_policy(
        client: Client, organization: OrgOpt = None, folder: FolderOpt = None, project: ProjectOpt = None,
        scope: ScopeOpt = None,
        full_resource_name: Annotated[str | None, typer.Option("--full-resource-name", help="Who has access to "
                                                               "this resource (e.g. //ml.googleapis.com/...)")]
        = None,
        identity: Annotated[str | None, typer.Option("--identity", help="What this member can do, e.g. "
                                                     "user:alice@example.com")] = None,
        roles: Annotated[list[str] | None, typer.Option("--roles", help="Only these roles (repeatable)")] = None,
        permissions: Annotated[list[str] | None, typer.Option("--permissions", help="Only these permissions "
                                                              "(repeatable)")] = None,
        expand_groups: Annotated[bool, typer.Option("--expand-groups", help="List groups' members")] = False,
        expand_roles: Annotated[bool, typer.Option("--expand-roles", help="List roles' permissions")] = False,
        expand_resources: Annotated[bool, typer.Option("--expand-resources", help="List resources below")]
        = False,
        output_group_edges: Annotated[bool, typer.Option("--output-group-edges")] = False,
        output_resource_edges: Annotated[bool, typer.Option("--output-resource-edges")] = False,
        analyze_service_account_impersonation: Annotated[bool, typer.Option(
            "--analyze-service-account-impersonation", help="Also who can act as / mint tokens of the service "
            "accounts found")] = False,
        access_time: Annotated[str | None, typer.Option("--access-time", help="Evaluate conditions at this "
                                                        "RFC 3339 time")] = None,
        fmt: FormatOpt = Format.table, filter_: FilterOpt = None) -> None:
    """Who has which access to what (Cloud Asset analyzeIamPolicy)."""
    where = _scope(scope, organization, folder, project, client)
    params: dict[str, Any] = {
        "analysisQuery.resourceSelector.fullResourceName": full_resource_name,
        "analysisQuery.identitySelector.identity": identity,
        "analysisQuery.accessSelector.roles": roles or None,
        "analysisQuery.accessSelector.permissions": permissions or None,
        "analysisQuery.conditionContext.accessTime": access_time}
    for flag, value in (("expandGroups", expand_groups), ("expandRoles", expand_roles),
                        ("expandResources", expand_resources), ("outputGroupEdges", output_group_edges),
                        ("outputResourceEdges", output_resource_edges),
                        ("analyzeServiceAccountImpersonation", analyze_service_account_impersonation)):
        if value:
            params[f"analysisQuery.options.{flag}"] = True
    out = client.get(f"/v1/{where}:analyzeIamPolicy", **params)
    if fmt is not Format.table and not filter_:
        _emit(out, fmt)
        return
    rows = _rows(out.get("mainAnalysis", {}))
    for imp in out.get("serviceAccountImpersonationAnalysis", []):
        rows += _rows(imp, via=str(imp.get("analysisQuery", {}).get("keycardServiceAccount", "")))
    show_list(rows, fmt, (("ATTACHED TO", "attachedResource"), ("ROLE", "role"), ("IDENTITIES", "identities"),
                          ("ACCESSES", "accesses"), ("CONDITION", "condition"), ("VIA (impersonating)", "via")),
              filter_, title="IAM policy analysis")


@app.command("search-all-iam-policies")
@remote
def search_all_iam_policies(
        client: Client, scope: ScopeOpt = None, organization: OrgOpt = None, folder: FolderOpt = None,
        project: ProjectOpt = None,
        query: Annotated[str, typer.Option("--query", help="e.g. policy:alice@example.com, policy:roles/owner, "
                                           "policy.role.permissions:ml.models.get, memberTypes:serviceAccount")]
        = "",
        asset_types: Annotated[list[str] | None, typer.Option("--asset-types", help="Only these asset types "
                                                              "(repeatable)")] = None,
        order_by: Annotated[str | None, typer.Option("--order-by")] = None,
        fmt: FormatOpt = Format.table, filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Allow policies matching a query (Cloud Asset searchAllIamPolicies)."""
    where = _scope(scope, organization, folder, project, client)
    items = list(client.pages(f"/v1/{where}:searchAllIamPolicies", "results", limit=limit, params={
        "query": query or None, "assetTypes": asset_types or None, "orderBy": order_by}))
    rows = [{**r, "bindings": [f"{b['role']}: {', '.join(b['members'])}" for b in r["policy"].get("bindings", [])]}
            for r in items] if fmt is Format.table else items
    show_list(rows, fmt, (("RESOURCE", "resource"), ("ASSET TYPE", "assetType"), ("BINDINGS", "bindings")),
              filter_, title="IAM policies")


@app.command("search-all-resources")
@remote
def search_all_resources(
        client: Client, scope: ScopeOpt = None, organization: OrgOpt = None, folder: FolderOpt = None,
        project: ProjectOpt = None,
        query: Annotated[str, typer.Option("--query", help="e.g. name:prod, displayName:ml, project:my-proj, "
                                           "labels.team:ml, state:ACTIVE")] = "",
        asset_types: Annotated[list[str] | None, typer.Option("--asset-types")] = None,
        order_by: Annotated[str | None, typer.Option("--order-by")] = None,
        fmt: FormatOpt = Format.table, filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Resources matching a query (Cloud Asset searchAllResources)."""
    where = _scope(scope, organization, folder, project, client)
    items = list(client.pages(f"/v1/{where}:searchAllResources", "results", limit=limit, params={
        "query": query or None, "assetTypes": asset_types or None, "orderBy": order_by}))
    show_list(items, fmt, (("NAME", "name"), ("ASSET TYPE", "assetType"), ("DISPLAY NAME", "displayName"),
                           ("PROJECT", "project")), filter_, title="Resources")


@app.command("export")
@remote
def export(client: Client,
           output_path: Annotated[str, typer.Option("--output-path", help="gs://BUCKET/OBJECT in keycard's object "
                                                    "store")],
           organization: OrgOpt = None, folder: FolderOpt = None, project: ProjectOpt = None,
           content_type: Annotated[str, typer.Option("--content-type", help="resource or iam-policy")] = "resource",
           asset_types: Annotated[list[str] | None, typer.Option("--asset-types")] = None,
           fmt: FormatOpt = Format.table) -> None:
    """Export resources or allow policies as newline-delimited JSON (Cloud Asset exportAssets)."""
    where = _scope(None, organization, folder, project, client)
    kind = {"resource": "RESOURCE", "iam-policy": "IAM_POLICY"}.get(content_type.lower().replace("_", "-"))
    if kind is None:
        raise ApiError(0, "INVALID_ARGUMENT", f"Invalid --content-type {content_type!r}.", reason="BAD_FLAGS",
                       hint="Use --content-type resource or --content-type iam-policy.")
    body: dict[str, Any] = {"contentType": kind, "outputConfig": {"gcsDestination": {"uri": output_path}}}
    if asset_types:
        body["assetTypes"] = asset_types
    op = client.post(f"/v1/{where}:exportAssets", body)
    count = op.get("response", {}).get("keycardAssetCount", 0)
    show(op, fmt, f"Exported {count} assets of {where} to {output_path} (operation {op.get('name')}).")


# ============================================================================================ import
def import_command(
        cai: Annotated[list[Path], typer.Option("--cai", help="Cloud Asset Inventory export (NDJSON); repeat for "
                                                "the resource and iam-policy files")],
        groups: Annotated[Path | None, typer.Option("--groups", help="JSON object {group email: [members]}")]
        = None,
        grant: Annotated[list[str] | None, typer.Option("--grant", help="Member to get roles/cloudasset.viewer on "
                                                        "each imported organization (repeatable)")] = None,
        database: Annotated[str | None, typer.Option("--database", help="sqlite:///PATH or postgresql://... "
                                                     "(default: SQLite under --data-dir)")] = None,
        data_dir: Annotated[Path, typer.Option("--data-dir", help="Where the embedded SQLite database lives.")]
        = Path(".keycard"),
        fmt: FormatOpt = Format.table) -> None:
    """Load an organization from a Cloud Asset Inventory export into this server's store (server's host)."""
    from keycard.cli import _database
    from keycard.services.cloudasset_import import import_cai
    from keycard.store.sql import open_store
    group_map = None
    if groups is not None:
        try:
            group_map = json.loads(groups.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            from keycard.errors import KeycardError
            raise KeycardError(f"Cannot read {groups}: {e}. Pass a readable JSON file.") from None
    store = open_store(_database(database, data_dir))
    tasks: dict[str, TaskID] = {}
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn(), console=err, transient=fmt is not Format.table, disable=False)
    try:
        with bar:
            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task("reading and checking the export" if phase == "read"
                                                else "writing records", total=max(total, 1))
                bar.update(tasks[phase], completed=done, total=max(total, 1))
            out = import_cai(store, [str(p) for p in cai], groups=group_map, grant=grant or [],
                             progress=progress)
    finally:
        store.close()
    if fmt is not Format.table:
        _emit(out, fmt)
        return
    console.print(f"Imported {', '.join(out['organizationsImported']) or 'no organization'}: {out['resources']} "
                  f"resources ({out['projects']} projects), {out['policies']} allow policies with "
                  f"{out['bindings']} bindings, {out['groups']} groups ({out['records']} records).", highlight=False)
    console.print("Analyze it: keycard asset analyze-iam-policy --organization ORG_ID --permissions P "
                  "--full-resource-name R (with a grant on it, e.g. --grant user:you@example.com)", highlight=False)
