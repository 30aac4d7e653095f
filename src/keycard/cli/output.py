"""What every keycard command shares: output formats, consoles, exit codes."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# Stable exit codes of every keycard command (docs/cli.md): 0 ok; 1 denied (403/401, or a decision that denies);
# 2 bad input (400, unreadable file, bad option); 3 not found (404); 4 conflict (409: exists, stale etag);
# 5 server unreachable or failing (5xx, 429, network).
EXIT_OK, EXIT_DENIED, EXIT_BAD_INPUT, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5


class Format(str, Enum):
    table = "table"
    json = "json"
    yaml = "yaml"


FormatOpt = Annotated[Format, typer.Option("--format", help="Output format: table (for people), json or yaml.")]


def _emit(data: Any, fmt: Format) -> None:
    if fmt is Format.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
