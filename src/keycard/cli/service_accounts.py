"""``keycard iam service-accounts …`` and ``… keys …`` (IAM v1 service accounts and keys)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Annotated

import typer

from keycard.cli.output import Format, FormatOpt
from keycard.cli.policy import PolicyTarget, add_policy_commands
from keycard.cli.remote import FilterOpt, LimitOpt, remote, show, show_list
from keycard.client import Client, default_project

app = typer.Typer(help="Service accounts: create, list, describe, delete, disable, enable; their allow "
                  "policies; keys.", no_args_is_help=True)
keys = typer.Typer(help="Service-account keys: create (writes a key file), list, delete.", no_args_is_help=True)
app.add_typer(keys, name="keys")

AccountArg = Annotated[str, typer.Argument(metavar="EMAIL", help="The account's email (or unique id)")]
ProjectOpt = Annotated[str | None, typer.Option("--project", help="Project of the accounts")]
IamAccountOpt = Annotated[str, typer.Option("--iam-account", help="The service account's email")]
COLUMNS = (("DISPLAY NAME", "displayName"), ("EMAIL", "email"), ("DISABLED", "disabled"))
KEY_COLUMNS = (("KEY_ID", "name"), ("CREATED_AT", "validAfterTime"), ("EXPIRES_AT", "validBeforeTime"),
               ("TYPE", "keyType"), ("DISABLED", "disabled"))


def _one(account: str) -> str:
    return f"/v1/projects/-/serviceAccounts/{account}"


def _need_project(project: str | None) -> str:
    return default_project(project)


@app.command("create")
@remote
def create(client: Client, account_id: Annotated[str, typer.Argument(metavar="NAME", help="Account id (6-30 "
                                                                     "characters), the part before @")],
           project: ProjectOpt = None,
           display_name: Annotated[str | None, typer.Option("--display-name")] = None,
           description: Annotated[str | None, typer.Option("--description")] = None,
           fmt: FormatOpt = Format.table) -> None:
    """Create a service account in a project."""
    sa = {k: v for k, v in (("displayName", display_name), ("description", description)) if v}
    out = client.post(f"/v1/projects/{_need_project(project)}/serviceAccounts",
                      {"accountId": account_id, "serviceAccount": sa})
    show(out, fmt, f"Created service account [{out.get('email', account_id)}].")


@app.command("list")
@remote
def list_(client: Client, project: ProjectOpt = None, fmt: FormatOpt = Format.table, filter_: FilterOpt = None,
          limit: LimitOpt = None) -> None:
    """Service accounts of a project."""
    show_list(client.pages(f"/v1/projects/{_need_project(project)}/serviceAccounts", "accounts",
                           params={"pageSize": 100}), fmt, COLUMNS, filter_, limit=limit)


@app.command("describe")
@remote
def describe(client: Client, account: AccountArg, fmt: FormatOpt = Format.table) -> None:
    """One service account."""
    show(client.get(_one(account)), fmt)


@app.command("delete")
@remote
def delete(client: Client, account: AccountArg, fmt: FormatOpt = Format.table) -> None:
    """Delete a service account (undelete within 30 days, by unique id)."""
    uid = client.get(_one(account)).get("uniqueId", "")
    out = client.delete(_one(account))
    show(out, fmt, f"Deleted service account [{account}]."
         + (f" Undo with: keycard iam service-accounts undelete {uid}" if uid else ""))


@app.command("undelete")
@remote
def undelete(client: Client, unique_id: Annotated[str, typer.Argument(metavar="UNIQUE_ID")],
             fmt: FormatOpt = Format.table) -> None:
    """Restore a deleted service account."""
    out = client.post(f"{_one(unique_id)}:undelete")
    show(out, fmt, f"Restored service account [{out.get('restoredAccount', {}).get('email', unique_id)}].")


@app.command("disable")
@remote
def disable(client: Client, account: AccountArg, fmt: FormatOpt = Format.table) -> None:
    """Disable a service account: its tokens and keys stop working."""
    show(client.post(f"{_one(account)}:disable"), fmt, f"Disabled service account [{account}].")


@app.command("enable")
@remote
def enable(client: Client, account: AccountArg, fmt: FormatOpt = Format.table) -> None:
    """Enable a disabled service account."""
    show(client.post(f"{_one(account)}:enable"), fmt, f"Enabled service account [{account}].")


add_policy_commands(app, PolicyTarget("service account", "EMAIL", lambda a, _: _one(a)))


@keys.command("create")
@remote
def key_create(client: Client, output: Annotated[Path, typer.Argument(metavar="OUTPUT_FILE",
                                                                      help="Where to write the key file")],
               iam_account: IamAccountOpt, fmt: FormatOpt = Format.table) -> None:
    """Create a key and write its key file (use it with --key-file or GOOGLE_APPLICATION_CREDENTIALS)."""
    out = client.post(f"{_one(iam_account)}/keys", {"privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE"})
    data = base64.b64decode(out.get("privateKeyData", ""))
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    meta = {k: v for k, v in out.items() if k != "privateKeyData"}
    show(meta, fmt, f"Created key [{out.get('name', '').rsplit('/', 1)[-1]}] of [{iam_account}] and wrote it to "
                    f"{output} (mode 600).")


@keys.command("list")
@remote
def key_list(client: Client, iam_account: IamAccountOpt,
             managed_by: Annotated[str | None, typer.Option("--managed-by", help="user or system")] = None,
             fmt: FormatOpt = Format.table, filter_: FilterOpt = None) -> None:
    """Keys of a service account."""
    types = {"user": "USER_MANAGED", "system": "SYSTEM_MANAGED"}.get(managed_by or "")
    items = client.get(f"{_one(iam_account)}/keys", keyTypes=types).get("keys", [])
    for k in items:
        k["name"] = k.get("name", "").rsplit("/", 1)[-1]
    show_list(items, fmt, KEY_COLUMNS, filter_)


@keys.command("delete")
@remote
def key_delete(client: Client, key_id: Annotated[str, typer.Argument(metavar="KEY_ID")],
               iam_account: IamAccountOpt, fmt: FormatOpt = Format.table) -> None:
    """Delete a key: its key file stops working."""
    show(client.delete(f"{_one(iam_account)}/keys/{key_id}"), fmt, f"Deleted key [{key_id}] of [{iam_account}].")
