"""``keycard config set|get|list|unset``: the user's settings (endpoint, credentials) in one YAML file."""

from __future__ import annotations

from typing import Annotated

import typer

from keycard.cli.output import EXIT_BAD_INPUT, EXIT_NOT_FOUND, Format, FormatOpt, _emit, console, err
from keycard.client import CONFIG_KEYS, ApiError, Config, config_path

app = typer.Typer(help=f"Settings of the keycard CLI ({config_path()}; KEYCARD_CONFIG overrides the path).",
                  no_args_is_help=True)

KeyArg = Annotated[str, typer.Argument(help=f"One of: {', '.join(sorted(CONFIG_KEYS))}")]


@app.command("set")
def set_(key: KeyArg, value: Annotated[str, typer.Argument(help="The value")]) -> None:
    """Set a setting, e.g. `keycard config set endpoint http://127.0.0.1:8080`."""
    try:
        Config.load().set(key, value)
    except ApiError as e:
        err.print(f"[red]ERROR:[/] {e.message}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"Updated [bold]{key}[/].", highlight=False)


@app.command("unset")
def unset(key: KeyArg) -> None:
    """Remove a setting."""
    try:
        Config.load().set(key, None)
    except ApiError as e:
        err.print(f"[red]ERROR:[/] {e.message}", highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(f"Unset [bold]{key}[/].", highlight=False)


@app.command("get")
def get(key: KeyArg) -> None:
    """Print one setting (exit 3 if it is not set)."""
    value = Config.load().get(key)
    if value is None:
        err.print(f"{key} is not set. Set it with: keycard config set {key} VALUE", highlight=False)
        raise typer.Exit(EXIT_NOT_FOUND)
    typer.echo(value)


@app.command("list")
def list_(fmt: FormatOpt = Format.table) -> None:
    """Every setting, and where the file is."""
    cfg = Config.load()
    if fmt is not Format.table:
        _emit(cfg.values, fmt)
        return
    console.print(f"[dim]{cfg.path}[/]", highlight=False)
    for k in sorted(CONFIG_KEYS):
        console.print(f"{k} = {cfg.values.get(k, '(unset)')}", highlight=False, markup=False)
