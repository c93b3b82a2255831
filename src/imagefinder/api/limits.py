"""Refuse request bodies over the size limit, declared (Content-Length) or streamed (chunked).

A pure ASGI middleware, outside everything else. It answers 413 at once when the declared length
is too large. Otherwise it counts the bytes as the application reads them; past the limit it tells
the application the client went away (so it stops reading), drops whatever the application then
tries to send, and answers 413 itself. No upload is buffered past the limit, however it is sent."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagefinder.api.errors import CODES, error_response


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        limit_for_message: int,
        per_path: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """`per_path`: path -> (max_bytes, limit_for_message) for requests that carry several
        images (a batch of files, each within the single-image limit)."""
        self.app = app
        self.max_bytes = max_bytes
        self.limit_for_message = limit_for_message
        self.per_path = dict(per_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, for_message = self.per_path.get(scope["path"], (self.max_bytes, self.limit_for_message))
        refusal = error_response(
            CODES["image_too_large"][0],
            "image_too_large",
            f"request body exceeds the limit of {for_message} bytes",
        )
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > max_bytes:
            await refusal(scope, receive, send)
            return
        seen = 0
        too_large = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the 413 below answers instead
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise  # the app's own failure: the error handlers outside deal with it
        if too_large and not started:
            await refusal(scope, receive, send)
