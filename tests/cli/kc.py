"""Run the installed `keycard` entry point as a subprocess against a live server (shared by tests/cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from server.conftest import ADMIN, Server

KEYCARD_BIN = str(Path(sys.executable).with_name("keycard"))


def kc(server: Server | None, *args: str, user: str | None = ADMIN, env: dict[str, str] | None = None,
       config: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`keycard ARGS` with the server's endpoint and a token of ``user`` (None: no credentials given)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("KEYCARD_")}
    e["KEYCARD_CONFIG"] = str(config) if config else os.devnull + ".kc-none"   # never the user's own config
    e["COLUMNS"] = "250"
    if server is not None:
        e["KEYCARD_ENDPOINT"] = server.url
        if user is not None:
            e["KEYCARD_ACCESS_TOKEN"] = server.token(user)
    e.update(env or {})
    return subprocess.run([KEYCARD_BIN, *args], capture_output=True, text=True, env=e, timeout=timeout)


def kcj(server: Server | None, *args: str, **kw: Any) -> Any:
    """`keycard ARGS --format json`, exit 0 asserted, stdout parsed."""
    r = kc(server, *args, "--format", "json", **kw)
    assert r.returncode == 0, f"keycard {' '.join(args)} → {r.returncode}\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout)
