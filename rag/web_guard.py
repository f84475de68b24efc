"""An ASGI middleware that refuses cross-origin requests to the web app.

Gradio answers a request from any web page (it only leaves out the CORS header, so a foreign page cannot read
the reply, but its POST still runs: an upload, a question). A browser names the page that sent a request in
its Origin header; this app's own page is served from the host the request is addressed to, so a request whose
Origin is another host or port is refused with 403. Clients that are not browsers (gradio_client, curl) send no
Origin and are not affected.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)


def _origin_host(origin: str) -> str | None:
    parts = urlsplit(origin)
    if not parts.scheme or not parts.netloc:
        return None  # "null" (a sandboxed page or a file://) or garbage
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    port = parts.port or default
    return f"{host}:{port}".lower()


def _request_host(host_header: str, scheme: str) -> str:
    default = 443 if scheme in ("https", "wss") else 80
    parts = urlsplit(f"//{host_header}")
    return f"{parts.hostname or ''}:{parts.port or default}".lower()


class SameOriginOnly:
    """Refuse (403) HTTP and WebSocket requests whose Origin is not the host they are addressed to."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is None or _origin_host(origin) == _request_host(headers.get("host", ""), scope.get("scheme", "http")):
            await self.app(scope, receive, send)
            return
        logger.warning("refused a %s request to %s from the foreign origin %r", scope.get("method", "websocket"),
                       scope.get("path", ""), origin[:200])
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b"cross-origin requests are refused: open the app from its own address"
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
