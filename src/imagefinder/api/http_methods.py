"""HTTP methods as generic clients expect them: HEAD on every GET route, and `Allow` on a 405.

HEAD (RFC 9110 9.3.2): the GET's status and headers, without its body.

FastAPI routes declare GET only, and answer HEAD with 405; uptime monitors, link checkers and
`curl -I` send HEAD. Rather than declaring HEAD on each route (which would also put a HEAD
operation beside each GET in the OpenAPI document), a HEAD request is run as the GET it asks
about, and the body is dropped on the way out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class MethodTable:
    """`Allow` for a 405 (RFC 9110 15.5.6): the methods of the resource the path names. The
    resource is the first route template, in routing order, that the path matches, and its
    methods are those of every route with that template: `/images/x` allows GET and DELETE (two
    routes), `/images/x/file` GET only, though the DELETE route's `{id:path}` would match it too.
    Built from the routers themselves, since included routers do not say which route matched."""

    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self._routes: list[tuple[re.Pattern[str], str, set[str]]] = [
            (route.path_regex, route.path, set(route.methods or ()))  # type: ignore[attr-defined]
            for route in routes
            if hasattr(route, "path_regex") and getattr(route, "methods", None)
        ]

    def allowed(self, path: str) -> str | None:
        """ "GET, HEAD"-style, or None for a path no route template names (a mount's files)."""
        template = next((tpl for regex, tpl, _ in self._routes if regex.match(path)), None)
        if template is None:
            return None
        methods = set().union(*(methods for _, tpl, methods in self._routes if tpl == template))
        if "GET" in methods:
            methods.add("HEAD")
        return ", ".join(sorted(methods))
