"""Tells the git pool whether a request's client is still there, so that work for a client that left never starts.

A sync may wait a long time for its mirror's lock and for a git slot (`app.git.pool`); a client that gave up
meanwhile must not still cost a fetch. The ASGI server reports a closed connection as an `http.disconnect` message
on `receive`, but only while someone waits on `receive`: uvicorn stops reading a connection once its request has
arrived, and reads on (seeing the client close it) only while the application asks for a message. So when git work
is about to wait, `watch` starts a task that waits on `receive` until the disconnect (or the end of the response).
By then the handler has its input (the body is read before it runs), so nothing it needs is drained.
"""

from __future__ import annotations

import asyncio

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.git.pool import CLIENT


class _Presence:
    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._watching: asyncio.Task[None] | None = None
        self._gone = False

    def watch(self) -> None:
        if self._watching is None:
            self._watching = asyncio.create_task(self._until_disconnected())

    def gone(self) -> bool:
        return self._gone

    async def _until_disconnected(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone = True

    def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()


def client_presence(app: ASGIApp) -> ASGIApp:
    """Litestar middleware: a `ClientPresence` in `app.git.pool.CLIENT` for each HTTP request."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        presence = _Presence(receive)
        token = CLIENT.set(presence)
        try:
            await app(scope, receive, send)
        finally:
            CLIENT.reset(token)
            presence.close()

    return middleware
