"""``keycard organizations …`` (Cloud Resource Manager v3 organizations)."""

from __future__ import annotations

from typing import Annotated

import typer

from keycard.cli.output import Format, FormatOpt
from keycard.cli.policy import PolicyTarget, add_policy_commands
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import Client

app = typer.Typer(help="Organizations: list, describe; their allow policies.", no_args_is_help=True)

COLUMNS = (("DISPLAY_NAME", "displayName"), ("ID", "name"), ("DIRECTORY_CUSTOMER_ID", "directoryCustomerId"),
           ("STATE", "state"))


def _org(ident: str) -> str:
    return ident.removeprefix("organizations/")


@app.command("list")
@remote
def list_(client: Client, fmt: FormatOpt = Format.table, filter_: FilterOpt = None, limit: LimitOpt = None) -> None:
    """Organizations you can see."""
    show_list(client.pages("/v3/organizations:search", "organizations"), fmt, COLUMNS, filter_, limit=limit)


@app.command("describe")
@remote
def describe(client: Client, organization: Annotated[str, typer.Argument(metavar="ORGANIZATION_ID")],
             fmt: FormatOpt = Format.table) -> None:
    """One organization."""
    show(client.get(f"/v3/organizations/{_org(organization)}"), fmt)


add_policy_commands(app, PolicyTarget("organization", "ORGANIZATION_ID",
                                      lambda o, _: f"/v3/organizations/{_org(o)}"))
