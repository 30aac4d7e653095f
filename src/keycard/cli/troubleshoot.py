"""``keycard iam troubleshoot PRINCIPAL PERMISSION RESOURCE``: the server's Policy Troubleshooter v3, as a tree.

The tree shows each node of the resource's ancestry with its allow policy and bindings (role holds the
permission? member includes the principal, through which membership? condition result?), then the deny
policies and their rules; when access is denied, keycard's ``keycardRemedy`` extension names the smallest
predefined role and the narrowest node where granting it works, as a runnable command.
Exit code: 0 when the principal can access, 1 when not (or it depends on a condition), 2 bad input.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from keycard.cli.output import EXIT_DENIED, EXIT_OK, Format, FormatOpt, _emit, console
from keycard.cli.remote import remote
from keycard.client import Client

__all__ = ["full_resource_name", "render", "troubleshoot"]

_SHORT = re.compile(r"^(organizations|folders|projects)/[^/]+$")
_HIGH = "HEURISTIC_RELEVANCE_HIGH"


def full_resource_name(resource: str) -> str:
    """Shorthands: projects/P, folders/F, organizations/O, gs://BUCKET[/OBJECT] → full resource names."""
    if resource.startswith("//"):
        return resource
    if _SHORT.match(resource):
        return f"//cloudresourcemanager.googleapis.com/{resource}"
    if resource.startswith("gs://"):
        bucket, _, obj = resource[5:].partition("/")
        return f"//storage.googleapis.com/projects/_/buckets/{bucket}" + (f"/objects/{obj}" if obj else "")
    return resource


def _mark(ok: bool | None) -> str:
    return "[green]✓[/]" if ok else ("[yellow]?[/]" if ok is None else "[red]✗[/]")


def _state(s: str) -> str:
    short = s.rsplit("_STATE_", 1)[-1]
    colour = {"GRANTED": "green", "CAN_ACCESS": "green", "NOT_DENIED": "green", "DENIED": "red",
              "NOT_GRANTED": "red", "CANNOT_ACCESS": "red"}.get(short, "yellow")
    return f"[{colour}]{short}[/]"


def _condition(item: dict[str, Any]) -> str:
    cond = item.get("condition")
    if not cond:
        return ""
    exp = item.get("conditionExplanation", {})
    value = exp.get("value")
    result = "error: " + "; ".join(e.get("message", "") for e in exp.get("errors", [])) if value is None \
        else str(value).lower()
    return f" · condition [italic]{escape(cond.get('title') or cond.get('expression', ''))}[/] → {result}"


def _binding(node: Tree, b: dict[str, Any], show_all: bool, chains: dict[str, list[str]]) -> None:
    has_perm = b.get("rolePermission") == "ROLE_PERMISSION_INCLUDED"
    member_in = b.get("combinedMembership", {}).get("membership") == "MEMBERSHIP_MATCHED"
    line = (f"{_state(b.get('allowAccessState', ''))} [bold]{escape(b.get('role', ''))}[/] · permission in role "
            f"{_mark(has_perm)} · principal is a member {_mark(member_in)}{_condition(b)}")
    branch = node.add(line)
    for member, m in b.get("memberships", {}).items():
        matched = m.get("membership") == "MEMBERSHIP_MATCHED"
        if show_all or matched or m.get("relevance") == _HIGH:
            chain = chains.get(member) if matched else None
            via = f" [dim](via {escape(' → '.join(chain))})[/]" if chain else ""
            branch.add(f"{_mark(matched)} {escape(member)}{via}")


def _deny_rule(node: Tree, i: int, r: dict[str, Any]) -> None:
    perm_hit = r.get("combinedDeniedPermission", {}).get("permissionMatchingState") == "PERMISSION_PATTERN_MATCHED"
    perm_exc = r.get("combinedExceptionPermission", {}).get("permissionMatchingState") == \
        "PERMISSION_PATTERN_MATCHED"
    who_hit = r.get("combinedDeniedPrincipal", {}).get("membership") == "MEMBERSHIP_MATCHED"
    who_exc = r.get("combinedExceptionPrincipal", {}).get("membership") == "MEMBERSHIP_MATCHED"
    branch = node.add(f"rule {i}: {_state(r.get('denyAccessState', ''))} · permission denied {_mark(perm_hit)}"
                      f"{' (excepted)' if perm_exc else ''} · principal denied {_mark(who_hit)}"
                      f"{' (excepted)' if who_exc else ''}{_condition(r)}")
    for p, m in r.get("deniedPrincipals", {}).items():
        if m.get("membership") == "MEMBERSHIP_MATCHED":
            branch.add(f"{_mark(True)} denied principal {escape(p)}")


def render(answer: dict[str, Any], show_all: bool = False) -> Tree:
    """The v3 answer (and keycard's remedy) as a Rich tree."""
    at = answer.get("accessTuple", {})
    root = Tree(f"{_state(answer.get('overallAccessState', ''))} [bold]{escape(at.get('principal', ''))}[/] · "
                f"[bold]{at.get('permission', '')}[/] · {at.get('fullResourceName', '')}")
    allow = answer.get("allowPolicyExplanation", {})
    a_node = root.add(f"allow policies: {_state(allow.get('allowAccessState', ''))}")
    for pol in allow.get("explainedPolicies", []):
        bindings = [b for b in pol.get("bindingExplanations", [])
                    if show_all or b.get("relevance") == _HIGH]
        p_node = a_node.add(f"{pol.get('fullResourceName', '')} {_state(pol.get('allowAccessState', ''))} "
                            f"[dim]({len(pol.get('bindingExplanations', []))} bindings"
                            f"{', ' + str(len(bindings)) + ' relevant' if not show_all else ''})[/]")
        for b in bindings:
            _binding(p_node, b, show_all, answer.get("keycardMembershipChains", {}))
    deny = answer.get("denyPolicyExplanation", {})
    d_node = root.add(f"deny policies: {_state(deny.get('denyAccessState', ''))}")
    for res in deny.get("explainedResources", []):
        r_node = d_node.add(f"{res.get('fullResourceName', '')} {_state(res.get('denyAccessState', ''))}")
        for pol in res.get("explainedPolicies", []):
            name = pol.get("policy", {}).get("name", "")
            pol_node = r_node.add(f"{escape(name)} {_state(pol.get('denyAccessState', ''))}")
            for i, rule in enumerate(pol.get("ruleExplanations", [])):
                if show_all or rule.get("relevance") == _HIGH:
                    _deny_rule(pol_node, i, rule)
    fix = answer.get("keycardRemedy")
    if fix:
        f_node = root.add(f"[yellow]to grant it[/]: {escape(fix.get('message', ''))}")
        if fix.get("command"):
            f_node.add(f"[bold]{escape(fix['command'])}[/]")
    return root


@remote
def troubleshoot(client: Client,
                 principal: Annotated[str, typer.Argument(help="Email (user or service account), or "
                                                          "user:/serviceAccount:/group: member")],
                 permission: Annotated[str, typer.Argument(help="e.g. ml.models.get")],
                 resource: Annotated[str, typer.Argument(help="Full resource name, or projects/P, folders/F, "
                                                         "organizations/O, gs://BUCKET")],
                 show_all: Annotated[bool, typer.Option("--all", help="Show every binding and rule, not only "
                                                        "the relevant ones")] = False,
                 time: Annotated[str | None, typer.Option("--time", help="request.time for IAM Conditions "
                                                          "(RFC 3339)")] = None,
                 fmt: FormatOpt = Format.table) -> None:
    """Why PRINCIPAL has, or lacks, PERMISSION on RESOURCE; and what would grant it (exit 0 yes, 1 no)."""
    body: dict[str, Any] = {"accessTuple": {"principal": principal, "permission": permission,
                                            "fullResourceName": full_resource_name(resource)}}
    if time:
        body["accessTuple"]["conditionContext"] = {"request": {"receiveTime": time}}
    answer = client.post("/v3/iam:troubleshoot", body)
    if fmt is not Format.table:
        _emit(answer, fmt)
    else:
        # piped: no cropping at 80 columns (a terminal keeps its own width)
        out = console if console.is_terminal else Console(width=max(console.width, 2000), soft_wrap=True)
        out.print(render(answer, show_all), highlight=False)
    raise typer.Exit(EXIT_OK if answer.get("overallAccessState") == "CAN_ACCESS" else EXIT_DENIED)
