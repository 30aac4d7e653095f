"""WebSocket pass-through: decided like any request, then relayed frame by frame to the upstream."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

if TYPE_CHECKING:
    from keycard.proxy.app import ProxyApp, Receive, Scope, Send

__all__ = ["relay"]

_POLICY_VIOLATION = 1008
_TRY_AGAIN = 1013


async def relay(app: ProxyApp, scope: Scope, receive: Receive, send: Send) -> None:
    first = await receive()
    if first["type"] != "websocket.connect":
        return
    from keycard.proxy.app import unsafe_path
    if unsafe_path(scope):
        await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
        return
    d, _cred, source = await app.decide(scope)
    if d is None or d.decision != "ALLOW":
        # a refused upgrade: the client sees the handshake fail (403 under uvicorn), never the upstream
        await send({"type": "websocket.close", "code": _TRY_AGAIN if d is None else _POLICY_VIOLATION})
        return
    headers = [(k, v) for k, v in app.upstream_headers(scope["headers"], d, source, scope)
               if not k.startswith("sec-websocket") and k not in ("origin",)]
    target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    url = "ws" + app.upstream[4:] + target if app.upstream.startswith("http") else app.upstream + target
    protocols: Any = scope.get("subprotocols") or None
    try:
        upstream = await connect(url, additional_headers=headers, subprotocols=protocols, max_size=None)
    except (OSError, InvalidHandshake):
        await send({"type": "websocket.close", "code": _TRY_AGAIN})
        return
    async with upstream:
        await send({"type": "websocket.accept", "subprotocol": upstream.subprotocol})

        async def client_to_upstream() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    await upstream.close()
                    return
                if msg.get("bytes") is not None:
                    await upstream.send(msg["bytes"])
                elif msg.get("text") is not None:
                    await upstream.send(msg["text"])

        async def upstream_to_client() -> None:
            try:
                async for data in upstream:
                    if isinstance(data, bytes):
                        await send({"type": "websocket.send", "bytes": data})
                    else:
                        await send({"type": "websocket.send", "text": data})
            except ConnectionClosed:
                pass
            await send({"type": "websocket.close", "code": upstream.close_code or 1000})

        tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None and not isinstance(t.exception(), ConnectionClosed):
                raise t.exception()  # type: ignore[misc]
