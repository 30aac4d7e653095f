"""``keycard iam …``: roles, service accounts, deny policies, troubleshoot (other modules may add commands)."""

from __future__ import annotations

import typer

from keycard.cli import deny_policies, iam_roles, service_accounts, troubleshoot

app = typer.Typer(help="IAM: roles, service accounts and keys, deny policies, troubleshooting.", no_args_is_help=True)
app.add_typer(iam_roles.app, name="roles")
app.add_typer(service_accounts.app, name="service-accounts")
app.add_typer(deny_policies.app, name="deny-policies")
app.command("troubleshoot")(troubleshoot.troubleshoot)
