"""``keycard iam recommend | simulate | lint``: the answers users ask for, over the server's HTTP APIs.

* ``recommend [RESOURCE] [--apply ID]``: IAM recommendations (Recommender v1). ``--apply`` claims the
  recommendation, applies its operations to the resource's allow policy with one etag-guarded
  setIamPolicy (a normal, audited policy change) and marks it succeeded (failed if the write fails).
* ``simulate --policy FILE RESOURCE``: a Policy Simulator v1 replay of the recorded accesses of the last
  90 days under the proposed policy; lists the accesses that would change.
* ``lint [RESOURCE] [--severity S]``: keycard's IAM lint of a subtree; exits 6 when a finding at or above
  ``--severity`` exists (so it runs in CI).

``attach(app)`` adds them to the ``iam`` command group (created if no other module made one yet).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from keycard.cli.output import Format, FormatOpt, _emit, console, err
from keycard.cli.remote import read_document, remote
from keycard.client import ApiError, Client

__all__ = ["EXIT_FINDINGS", "attach"]

EXIT_FINDINGS = 6
_RECO = "locations/global/recommenders/google.iam.policy.Recommender/recommendations"
_CRM = "//cloudresourcemanager.googleapis.com/"
_V3 = {"projects": "/v3/projects/", "folders": "/v3/folders/", "organizations": "/v3/organizations/"}

ResourceArg = Annotated[str | None, typer.Argument(metavar="[RESOURCE]", help="projects/ID, folders/N or "
                                                   "organizations/N (default: the organization)")]


def _node(client: Client, resource: str | None) -> str:
    """``projects/ID`` / ``folders/N`` / ``organizations/N`` (a full //cloudresourcemanager name works too)."""
    if resource is None:
        orgs = client.get("/v3/organizations:search").get("organizations", [])
        if len(orgs) != 1:
            raise ApiError(0, "INVALID_ARGUMENT", "Which resource?", reason="NO_RESOURCE",
                           hint="Pass projects/ID, folders/N or organizations/N.")
        return str(orgs[0]["name"])
    node = resource.removeprefix(_CRM)
    if node.split("/", 1)[0] not in _V3 or node.count("/") != 1:
        raise ApiError(0, "INVALID_ARGUMENT", f"Invalid RESOURCE {resource!r}.", reason="BAD_RESOURCE",
                       hint="Use projects/ID, folders/N or organizations/N.")
    return node


# ------------------------------------------------------------------------------------------ recommend
def _apply_operations(policy: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Google's recommendation operations (add/remove a member of an unconditional binding of a role)."""
    bindings = [dict(b) for b in policy.get("bindings", [])]
    for op in operations:
        filters = op.get("pathFilters", {})
        role = filters.get("/iamPolicy/bindings/*/role")
        member = op.get("value") if op.get("action") == "add" else filters.get("/iamPolicy/bindings/*/members/*")
        if not role or not member:
            raise ApiError(0, "FAILED_PRECONDITION", f"Unsupported recommendation operation {op}.",
                           reason="UNSUPPORTED_OPERATION")
        target = next((b for b in bindings if b["role"] == role and not b.get("condition")), None)
        if op.get("action") == "add":
            if target is None:
                bindings.append({"role": role, "members": [member]})
            elif member not in target["members"]:
                target["members"] = [*target["members"], member]
        elif op.get("action") == "remove" and target is not None:
            target["members"] = [m for m in target["members"] if m != member]
    return {**policy, "bindings": [b for b in bindings if b["members"]]}


def _apply(client: Client, node: str, rid: str) -> dict[str, Any]:
    name = f"/v1/{node}/{_RECO}/{rid}"
    reco = client.get(name)
    reco = client.post(name + ":markClaimed", {"etag": reco["etag"], "stateMetadata": {"by": "keycard-cli"}})
    base = _V3[node.split("/", 1)[0]] + node.split("/", 1)[1]
    try:
        policy = client.post(base + ":getIamPolicy", {"options": {"requestedPolicyVersion": 3}})
        new = _apply_operations(policy, reco["content"]["operationGroups"][0]["operations"])
        client.post(base + ":setIamPolicy", {"policy": new})
    except ApiError as e:
        client.post(name + ":markFailed", {"etag": reco["etag"], "stateMetadata": {"error": e.status[:63]}})
        raise
    return dict(client.post(name + ":markSucceeded", {"etag": reco["etag"]}))


@remote
def recommend(client: Client, resource: ResourceArg = None,
              apply: Annotated[str | None, typer.Option("--apply", metavar="ID", help="Apply this recommendation "
                                                        "(its id, or its full name)")] = None,
              fmt: FormatOpt = Format.table) -> None:
    """IAM recommendations: roles to remove or replace, from the permissions used in the last 90 days."""
    node = _node(client, resource)
    if apply:
        done = _apply(client, node, apply.rsplit("/", 1)[-1])
        if fmt is not Format.table:
            _emit(done, fmt)
        else:
            console.print(f"[green]Applied[/] {done['description']}", highlight=False)
        return
    recos = list(client.pages(f"/v1/{node}/{_RECO}", "recommendations"))
    if fmt is not Format.table:
        _emit(recos, fmt)
        return
    if not recos:
        err.print(f"No recommendations for {node}.")
        return
    table = Table("ID", "ACTION", "MEMBER", "ROLE", "USED", "STATE", title=f"IAM recommendations for {node}")
    for r in recos:
        ov = r["content"]["overview"]
        role = ov["removedRole"] + (f" → {', '.join(ov['addedRoles'])}" if ov.get("addedRoles") else " → (remove)")
        table.add_row(r["name"].rsplit("/", 1)[1], r["recommenderSubtype"], ov["member"], role,
                      str(len(ov.get("usedPermissions", []))), r["stateInfo"]["state"])
    console.print(table)
    console.print(f"Apply one: keycard iam recommend {node} --apply ID", highlight=False)


# ------------------------------------------------------------------------------------------- simulate
def _parent(resource: str) -> str:
    """The project (or folder/organization) a replay of ``resource`` runs in."""
    parts = resource.lstrip("/").split("/")
    for i, p in enumerate(parts[:-1]):
        if p in _V3:
            return f"{p}/{parts[i + 1]}"
    raise ApiError(0, "INVALID_ARGUMENT", f"Invalid RESOURCE {resource!r}: no project, folder or organization in it.",
                   reason="BAD_RESOURCE", hint="Pass a full resource name, e.g. "
                   "//cloudresourcemanager.googleapis.com/projects/my-project.")


@remote
def simulate(client: Client, resource: Annotated[str, typer.Argument(help="Full resource name of the policy, e.g. "
                                                                     "//cloudresourcemanager.googleapis.com/"
                                                                     "projects/P (or projects/P)")],
             policy: Annotated[Path, typer.Option("--policy", help="The proposed allow policy (JSON or YAML, as "
                                                  "get-iam-policy prints it)")],
             fmt: FormatOpt = Format.table) -> None:
    """Replay the last 90 days of recorded accesses under a proposed policy; list the accesses that change."""
    full = resource if resource.startswith("//") else _CRM + resource
    doc = read_document(policy)
    if isinstance(doc, dict) and isinstance(doc.get("policy"), dict):
        doc = doc["policy"]
    parent = _parent(full)
    op = client.post(f"/v1/{parent}/locations/global/replays",
                     {"config": {"policyOverlay": {full: doc}, "logSource": "RECENT_ACCESSES"}})
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  transient=True, disable=fmt is not Format.table) as progress:
        progress.add_task("Replaying recorded accesses…")
        while not op.get("done"):
            time.sleep(0.2)
            op = client.get(f"/v1/{op['name']}")
    if op.get("error"):
        raise ApiError(0, "INTERNAL", str(op["error"].get("message", "the replay failed")), reason="REPLAY_FAILED")
    replay = op["response"]
    results = list(client.pages(f"/v1/{replay['name']}/results", "replayResults"))
    if fmt is not Format.table:
        _emit({"replay": {k: v for k, v in replay.items() if k != "@type"}, "results": results}, fmt)
        return
    s = replay.get("resultsSummary", {})
    console.print(f"Replayed {s.get('logCount', 0)} access tuples: {s.get('differenceCount', 0)} change, "
                  f"{s.get('unchangedCount', 0)} unchanged, {s.get('errorCount', 0)} errors.", highlight=False)
    if results:
        table = Table("CHANGE", "PRINCIPAL", "PERMISSION", "RESOURCE")
        for r in results:
            change = r.get("diff", {}).get("accessDiff", {}).get("accessChange", "ERROR")
            colour = "red" if change == "ACCESS_REVOKED" else "green" if change == "ACCESS_GAINED" else "yellow"
            at = r["accessTuple"]
            table.add_row(f"[{colour}]{change}[/]", at["principal"], at["permission"], at["fullResourceName"])
        console.print(table)


# ----------------------------------------------------------------------------------------------- lint
@remote
def lint(client: Client, resource: ResourceArg = None,
         severity: Annotated[str, typer.Option("--severity", help="Report (and fail on) findings at or above: "
                                               "LOW, MEDIUM, HIGH, CRITICAL")] = "LOW",
         fmt: FormatOpt = Format.table) -> None:
    """Flag risky IAM: basic roles, public access, old or unused keys, dead or expired bindings, limits.
    Exit code 6 when a finding at or above --severity exists."""
    node = _node(client, resource)
    out = client.get(f"/v1/{node}:lintIamPolicies", minSeverity=severity.upper())
    findings = out.get("findings", [])
    if fmt is not Format.table:
        _emit(findings, fmt)
    elif not findings:
        console.print(f"[green]No findings[/] at or above {severity.upper()} in {node}.", highlight=False)
    else:
        colours = {"CRITICAL": "bold red", "HIGH": "red", "MEDIUM": "yellow", "LOW": "cyan"}
        table = Table("SEVERITY", "RULE", "RESOURCE", "FINDING", "FIX", title=f"IAM lint of {node}")
        for f in findings:
            c = colours.get(f["severity"], "")
            table.add_row(f"[{c}]{f['severity']}[/]", f["rule"], f["resource"], f["message"], f.get("fix", ""))
        console.print(table)
    if findings:
        raise typer.Exit(EXIT_FINDINGS)


def attach(app: typer.Typer) -> None:
    """Add recommend, simulate and lint to the ``iam`` group (making the group if nobody has yet)."""
    iam = next((g.typer_instance for g in app.registered_groups if g.name == "iam"), None)
    if iam is None:
        iam = typer.Typer(help="IAM: roles, service accounts, troubleshooting, recommendations, simulation, lint.",
                          no_args_is_help=True)
        app.add_typer(iam, name="iam")
    iam.command("recommend")(recommend)
    iam.command("simulate")(simulate)
    iam.command("lint")(lint)
