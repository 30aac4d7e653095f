"""What every command that talks to a keycard server shares: connection options, errors, lists, filters.

A remote command is a function whose first parameter is ``client: Client``, decorated with :func:`remote`:
the decorator adds ``--endpoint``, ``--access-token``, ``--key-file`` and ``--user`` to the command, connects
lazily, and turns an :class:`~keycard.client.ApiError` into one message (reason + what to do) and a stable
exit code (see :mod:`keycard.cli.output` and docs/cli.md)::

    @group.command("list")
    @remote
    def list_(client: Client, fmt: FormatOpt = Format.table, filter_: FilterOpt = None) -> None:
        show_list(list(client.pages("/v3/projects", "projects")), fmt, COLUMNS, filter_)
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar, get_type_hints

import typer
import yaml
from rich.console import Console
from rich.table import Table

from keycard.cli.output import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_DENIED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    Format,
    _emit,
    console,
    err,
)
from keycard.client import ApiError, Client, connect

__all__ = ["Client", "EndpointOpt", "FilterOpt", "LimitOpt", "apply_filter", "exit_code", "fail", "read_document",
           "remote", "show", "show_list", "wide"]

P = ParamSpec("P")
R = TypeVar("R")

EndpointOpt = Annotated[str | None, typer.Option("--endpoint", help="keycard server URL (default: "
                                                 "$KEYCARD_ENDPOINT, then `keycard config get endpoint`)",
                                                 rich_help_panel="Connection")]
AccessTokenOpt = Annotated[str | None, typer.Option("--access-token", help="Bearer token to call with "
                                                    "(default: $KEYCARD_ACCESS_TOKEN)", show_default=False,
                                                    rich_help_panel="Connection")]
KeyFileOpt = Annotated[str | None, typer.Option("--key-file", help="Service-account key file to call with "
                                                "(default: $GOOGLE_APPLICATION_CREDENTIALS, config key_file)",
                                                rich_help_panel="Connection")]
UserOpt = Annotated[str | None, typer.Option("--user", help="On the server's host: call as this user with a "
                                             "locally minted token (default: $KEYCARD_USER, config user)",
                                             rich_help_panel="Connection")]
FilterOpt = Annotated[str | None, typer.Option("--filter", help="Keep items matching: field=value, "
                                               "field!=value, field:substring, field~regex; join with AND "
                                               "(dotted fields; lists match if any element does)")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="At most this many items")]

_CONNECTION = {
    "endpoint": EndpointOpt,
    "access_token": AccessTokenOpt,
    "key_file": KeyFileOpt,
    "user": UserOpt,
}


def exit_code(e: ApiError) -> int:
    """The documented exit code of a failed call (docs/cli.md)."""
    if e.http_status in (401, 403) or e.status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return EXIT_DENIED
    if e.http_status == 404 or e.status == "NOT_FOUND":
        return EXIT_NOT_FOUND
    if e.http_status == 409 or e.status in ("ALREADY_EXISTS", "ABORTED"):
        return EXIT_CONFLICT
    if e.http_status == 400 or e.status in ("INVALID_ARGUMENT", "FAILED_PRECONDITION"):
        return EXIT_BAD_INPUT
    return EXIT_UNAVAILABLE


def fail(e: ApiError) -> None:
    """Print the error (what failed, why, what to do) and exit with its code."""
    where = f"{e.http_status} " if e.http_status else ""
    why = e.status if e.reason == e.status else f"{e.status}, {e.reason}"
    err.print(f"[red]ERROR:[/] ({where}{why}) {e.message}", highlight=False)
    if e.hint:
        err.print(f"[yellow]→[/] {e.hint}", highlight=False)
    raise typer.Exit(exit_code(e))


def remote(func: Callable[..., R]) -> Callable[..., R]:
    """Give a command the connection options; call it with a connected :class:`Client` first."""
    sig = inspect.signature(func)
    hints = get_type_hints(func, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
           if p.name != "client"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)
             for name, ann in _CONNECTION.items()]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        conn = {name: kwargs.pop(name, None) for name in _CONNECTION}
        try:
            with connect(conn["endpoint"], access_token=conn["access_token"], key_file=conn["key_file"],
                         user=conn["user"]) as client:
                return func(client, *args, **kwargs)
        except ApiError as e:
            fail(e)
            raise  # unreachable: fail() exits

    del wrapper.__wrapped__  # typer must see the new signature, not func's
    wrapper.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: p.annotation for p in own}, **_CONNECTION,
                               "return": hints.get("return")}
    return wrapper


# -------------------------------------------------------------------------------------------- filter
_TERM = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(!=|=|:|~)\s*(.*?)\s*$")


def _values(item: Any, path: str) -> list[Any]:
    found = [item]
    for part in path.split("."):
        nxt: list[Any] = []
        for v in found:
            if isinstance(v, list):
                nxt.extend(x.get(part) for x in v if isinstance(x, dict))
            elif isinstance(v, dict):
                nxt.append(v.get(part))
        found = [x for x in nxt if x is not None]
    flat: list[Any] = []
    for v in found:
        flat.extend(v if isinstance(v, list) else [v])
    return flat


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _term(expr: str) -> Callable[[Any], bool]:
    m = _TERM.match(expr)
    if m is None:
        raise ApiError(0, "INVALID_ARGUMENT", f"Invalid --filter term {expr!r}.", reason="BAD_FILTER",
                       hint="Use field=value, field!=value, field:substring or field~regex, joined with AND, "
                            "e.g. --filter 'state=ACTIVE AND name:ml'.")
    path, op, raw = m.groups()
    want = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'" else raw
    if op == "~":
        try:
            rx = re.compile(want)
        except re.error as e:
            raise ApiError(0, "INVALID_ARGUMENT", f"Invalid regex in --filter term {expr!r}: {e}.",
                           reason="BAD_FILTER") from None
        return lambda item: any(rx.search(_text(v)) for v in _values(item, path))
    if op == ":":
        low = want.lower()
        return lambda item: any(low in _text(v).lower() for v in _values(item, path))
    if op == "=":
        return lambda item: any(_text(v) == want for v in _values(item, path))
    return lambda item: all(_text(v) != want for v in _values(item, path))


def apply_filter(items: Iterable[Any], expr: str | None) -> list[Any]:
    """gcloud-like simple filter: terms joined by AND (or spaces), each field OP value."""
    if not expr or not expr.strip():
        return list(items)
    terms = [t for t in re.split(r"\s+AND\s+|\s+(?=[A-Za-z_][\w.\-]*\s*(?:!=|=|:|~))", expr.strip()) if t]
    preds = [_term(t) for t in terms]
    return [i for i in items if all(p(i) for p in preds)]


# -------------------------------------------------------------------------------------------- output
def wide() -> Console:
    """The console for tables and trees: the terminal's, or when piped one wide enough not to crop at 80."""
    return console if console.is_terminal else Console(width=max(console.width, 240), soft_wrap=True)


def _cell(item: Any, path: str) -> str:
    vals = _values(item, path)
    return ", ".join(_text(v) for v in vals)


def show_list(items: Iterable[Any], fmt: Format, columns: Sequence[tuple[str, str]], filter_: str | None = None,
              *, limit: int | None = None, title: str | None = None) -> list[Any]:
    """A list command's output: filtered, then a Rich table (``columns``: header, dotted field) or JSON/YAML."""
    kept = apply_filter(items, filter_)
    if limit is not None:
        kept = kept[:max(limit, 0)]
    if fmt is not Format.table:
        _emit(kept, fmt)
        return kept
    if not kept:
        err.print("Listed 0 items.")
        return kept
    table = Table(*(h for h, _ in columns), title=title)
    for item in kept:
        table.add_row(*(_cell(item, p) for _, p in columns))
    wide().print(table)
    return kept


def show(data: Any, fmt: Format, message: str | None = None) -> None:
    """A single resource: YAML for people (as gcloud describes), or JSON/YAML; ``message`` replaces it."""
    if fmt is not Format.table:
        _emit(data, fmt)
    elif message is not None:
        console.print(message, highlight=False, markup=False)
    else:
        sys_out = yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if data != {} else ""
        console.print(sys_out.rstrip("\n"), highlight=False, markup=False)


def read_document(path: Path | str) -> Any:
    """A JSON or YAML file (``-`` for stdin) → its data; a bad file is exit code 2 with the reason."""
    import sys
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
        return yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        raise ApiError(0, "INVALID_ARGUMENT", f"Cannot read {path}: {e}.", reason="BAD_FILE",
                       hint="Pass a readable JSON or YAML file.") from None
