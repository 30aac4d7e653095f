"""get-iam-policy / set-iam-policy / add-iam-policy-binding / remove-iam-policy-binding, for any resource.

:func:`add_policy_commands` puts the four commands on a group (projects, folders, organizations, service
accounts, ml models and jobs, buckets). add/remove call keycard's server-side ``:keycardAddIamPolicyBinding`` /
``:keycardRemoveIamPolicyBinding``, which change the binding atomically (no read-modify-write race here).
"""

# No `from __future__ import annotations`: the commands' Annotated hints are built per group at run time.

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from keycard.cli.output import Format, FormatOpt, _emit, err
from keycard.cli.remote import FilterOpt, apply_filter, read_document, remote, wide
from keycard.client import ApiError, Client

__all__ = ["PolicyTarget", "add_policy_commands", "parse_condition", "show_policy"]

AllowLockoutOpt = Annotated[bool, typer.Option("--allow-lockout", help="Allow a change that removes your own "
                                               "setIamPolicy on the resource")]
MemberOpt = Annotated[list[str], typer.Option("--member", help="Principal, e.g. user:alice@example.com, "
                                              "group:…, serviceAccount:…, domain:…, allUsers (repeatable)")]
RoleOpt = Annotated[str, typer.Option("--role", help="Role, e.g. roles/viewer or projects/P/roles/custom")]
ConditionOpt = Annotated[str | None, typer.Option(
    "--condition", help="IAM Condition: expression=EXPR,title=TITLE[,description=DESC], or None for the "
                        "binding without a condition")]
ConditionFileOpt = Annotated[Path | None, typer.Option("--condition-from-file",
                                                       help="The condition as a YAML/JSON file")]


@dataclass(frozen=True)
class PolicyTarget:
    """How one kind of resource names its policy methods."""

    noun: str                                   # "project", "bucket", ...
    metavar: str                                # "PROJECT_ID", ...
    path: Callable[[str, str | None], str]      # (argument, --project) → the resource's path, e.g. /v3/projects/p1
    style: str = "crm"                          # crm: POST :getIamPolicy; ml: GET :getIamPolicy; storage: GET/PUT /iam
    project: bool = False                       # the commands take --project (resources inside a project)


_COND_KEY = re.compile(r",(?=\s*(?:expression|title|description)=)")


def parse_condition(text: str | None, file: Path | None = None) -> dict[str, str] | None:
    """``--condition`` (gcloud's ``expression=…,title=…,description=…``; ``None`` = no condition) → a Condition."""
    if file is not None:
        data = read_document(file)
        if not isinstance(data, dict) or not isinstance(data.get("expression"), str):
            raise ApiError(0, "INVALID_ARGUMENT", f"Invalid --condition-from-file {file}: expected "
                           "{expression, title, description?}.", reason="BAD_CONDITION")
        return {k: str(data[k]) for k in ("expression", "title", "description") if data.get(k)}
    if text is None or text.strip() in ("", "None", "none"):
        return None
    out: dict[str, str] = {}
    for part in _COND_KEY.split(text):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("expression", "title", "description"):
            raise ApiError(0, "INVALID_ARGUMENT", f"Invalid --condition {text!r}.", reason="BAD_CONDITION",
                           hint="Use --condition='expression=request.time < timestamp(\"2030-01-01T00:00:00Z\"),"
                                "title=until 2030' (or None for the binding without a condition).")
        out[key.strip()] = value.strip()
    if "expression" not in out:
        raise ApiError(0, "INVALID_ARGUMENT", f"Invalid --condition {text!r}: it needs expression=….",
                       reason="BAD_CONDITION")
    return out


def _rows(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": b.get("role", ""), "member": m, "condition": b.get("condition", {}).get("title")
             or b.get("condition", {}).get("expression", "")}
            for b in policy.get("bindings", []) for m in b.get("members", [])]


def show_policy(policy: dict[str, Any], fmt: Format, filter_: str | None = None) -> None:
    """A policy: one row per (role, member) for people; the policy itself as JSON/YAML."""
    if fmt is not Format.table:
        _emit(policy, fmt)
        return
    rows = apply_filter(_rows(policy), filter_)
    table = Table("role", "member", "condition", title=f"version {policy.get('version', 1)} · etag "
                  f"{policy.get('etag', '')}", title_justify="left")
    for r in rows:
        table.add_row(r["role"], r["member"], r["condition"])
    wide().print(table)


def _get(client: Client, t: PolicyTarget, ident: str, project: str | None) -> dict[str, Any]:
    base = t.path(ident, project)
    if t.style == "storage":
        out: dict[str, Any] = client.get(f"{base}/iam", optionsRequestedPolicyVersion=3)
    elif t.style == "ml":
        out = client.get(f"{base}:getIamPolicy", **{"options.requestedPolicyVersion": 3})
    else:
        out = client.post(f"{base}:getIamPolicy", {"options": {"requestedPolicyVersion": 3}})
    return out


def _lockout(allow: bool) -> dict[str, str]:
    return {"X-Keycard-Allow-Lockout": "true"} if allow else {}


def _set(client: Client, t: PolicyTarget, ident: str, project: str | None, policy: Any, allow_lockout: bool
         ) -> dict[str, Any]:
    base = t.path(ident, project)
    if not isinstance(policy, dict):
        raise ApiError(0, "INVALID_ARGUMENT", "Invalid policy file: expected a Policy object "
                       "({bindings: [...], etag: ...}).", reason="BAD_FILE")
    if t.style == "storage":
        out: dict[str, Any] = client.request("PUT", f"{base}/iam", json=policy, headers=_lockout(allow_lockout))
    else:
        out = client.request("POST", f"{base}:setIamPolicy", json={"policy": policy},
                             headers=_lockout(allow_lockout))
    return out


def _modify(client: Client, t: PolicyTarget, ident: str, project: str | None, verb: str, body: dict[str, Any],
            allow_lockout: bool) -> dict[str, Any]:
    base = t.path(ident, project)
    path = f"{base}/iam:{verb}" if t.style == "storage" else f"{base}:{verb}"
    out: dict[str, Any] = client.request("POST", path, json=body, headers=_lockout(allow_lockout))
    return out


def add_policy_commands(app: typer.Typer, t: PolicyTarget) -> None:
    """Register the four policy commands of ``t`` on ``app``."""
    Ident = Annotated[str, typer.Argument(metavar=t.metavar, help=f"The {t.noun}")]
    Project = Annotated[str | None, typer.Option("--project", hidden=not t.project,
                                                 help=f"Project of the {t.noun} (default: $KEYCARD_PROJECT, "
                                                 "config project)")]

    @app.command("get-iam-policy", help=f"Show the allow policy of a {t.noun} (version 3, with its etag).")
    @remote
    def get_iam_policy(client: Client, ident: Ident, project: Project = None, fmt: FormatOpt = Format.table,
                       filter_: FilterOpt = None) -> None:
        show_policy(_get(client, t, ident, project), fmt, filter_)

    @app.command("set-iam-policy", help=f"Replace the allow policy of a {t.noun} (its etag, if present, must "
                 "be current: 409 otherwise).")
    @remote
    def set_iam_policy(client: Client, ident: Ident,
                       policy_file: Annotated[Path, typer.Argument(metavar="POLICY_FILE",
                                                                   help="Policy as JSON or YAML ('-': stdin)")],
                       project: Project = None, allow_lockout: AllowLockoutOpt = False,
                       fmt: FormatOpt = Format.table) -> None:
        data = read_document(policy_file)
        if isinstance(data, dict) and isinstance(data.get("policy"), dict):
            data = data["policy"]
        out = _set(client, t, ident, project, data, allow_lockout)
        err.print(f"Updated IAM policy for {t.noun} [{ident}].", highlight=False, markup=False)
        show_policy(out, fmt)

    @app.command("add-iam-policy-binding", help=f"Grant a role to members on a {t.noun} (atomic on the server; "
                 "adding what is there already changes nothing).")
    @remote
    def add_binding(client: Client, ident: Ident, member: MemberOpt, role: RoleOpt,
                    condition: ConditionOpt = None, condition_from_file: ConditionFileOpt = None,
                    project: Project = None, allow_lockout: AllowLockoutOpt = False,
                    fmt: FormatOpt = Format.table) -> None:
        cond = parse_condition(condition, condition_from_file)
        binding: dict[str, Any] = {"role": role, "members": member, **({"condition": cond} if cond else {})}
        out = _modify(client, t, ident, project, "keycardAddIamPolicyBinding", {"binding": binding}, allow_lockout)
        err.print(f"Updated IAM policy for {t.noun} [{ident}].", highlight=False, markup=False)
        show_policy(out, fmt)

    @app.command("remove-iam-policy-binding",
                 help=f"Take a role away from members on a {t.noun} (atomic on the server).")
    @remote
    def remove_binding(client: Client, ident: Ident, member: MemberOpt, role: RoleOpt,
                       condition: ConditionOpt = None, condition_from_file: ConditionFileOpt = None,
                       all_: Annotated[bool, typer.Option("--all", help="Remove the member from every binding "
                                                          "of the role, whatever its condition")] = False,
                       project: Project = None, allow_lockout: AllowLockoutOpt = False,
                       fmt: FormatOpt = Format.table) -> None:
        cond = parse_condition(condition, condition_from_file)
        binding: dict[str, Any] = {"role": role, "members": member, **({"condition": cond} if cond else {})}
        body: dict[str, Any] = {"binding": binding, **({"allConditions": True} if all_ else {})}
        out = _modify(client, t, ident, project, "keycardRemoveIamPolicyBinding", body, allow_lockout)
        err.print(f"Updated IAM policy for {t.noun} [{ident}].", highlight=False, markup=False)
        show_policy(out, fmt)
