"""The tiny app the proxy tests put behind `keycard proxy` (run as a script: PORT KEYCARD_URL AUDIENCE).

Every request answers JSON: what arrived (method, path, headers, body length and SHA-256) and whether
X-Goog-IAP-JWT-Assertion verifies against keycard's JWKS with PyJWT (aud = the IAP resource,
iss = keycard). ``/__seen`` (asked directly, not through the proxy) lists every path that arrived;
``/stream/N`` streams N chunks of 64 KiB; ``/ws`` echoes WebSocket messages.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

PORT, KEYCARD, AUDIENCE = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]
JWKS = jwt.PyJWKClient(f"{KEYCARD}/.well-known/jwks.json", cache_keys=True)
SEEN: list[dict[str, Any]] = []


def verify(assertion: str | None) -> dict[str, Any]:
    if not assertion:
        return {"verified": False, "error": "missing"}
    try:
        key = JWKS.get_signing_key_from_jwt(assertion)
        claims = jwt.decode(assertion, key.key, algorithms=["ES256"], audience=AUDIENCE, issuer=KEYCARD)
    except jwt.PyJWTError as e:
        return {"verified": False, "error": str(e)}
    return {"verified": True, "claims": claims}


async def echo(request: Request) -> Response:
    body = await request.body()
    headers = [[k, v] for k, v in request.headers.items()]
    SEEN.append({"path": request.url.path, "headers": headers})
    return JSONResponse({"method": request.method, "path": request.url.path, "query": request.url.query,
                         "headers": headers, "bodyLength": len(body), "bodySha256": hashlib.sha256(body).hexdigest(),
                         "assertion": verify(request.headers.get("x-goog-iap-jwt-assertion"))})


async def seen(request: Request) -> Response:
    return JSONResponse(SEEN)


async def stream(request: Request) -> Response:
    n = int(request.path_params["n"])

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            yield bytes([65 + i % 26]) * 65536
    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def ws(socket: WebSocket) -> None:
    await socket.accept()
    await socket.send_text("user=" + socket.headers.get("x-goog-authenticated-user-email", ""))
    while True:
        msg = await socket.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            await socket.send_text("echo:" + msg["text"])
        elif msg.get("bytes") is not None:
            await socket.send_bytes(msg["bytes"])


app = Starlette(routes=[Route("/__seen", seen), Route("/stream/{n:int}", stream), WebSocketRoute("/ws", ws),
                        Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
