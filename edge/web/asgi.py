"""What the admin page's ASGI wrappers share: the wrapped app's attributes (app.state, app.routes …) stay
reachable through the wrapper, and anything but HTTP (uvicorn's lifespan, a websocket) passes straight through."""

from __future__ import annotations

from typing import Any


class Wrapper:
    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.http(scope, receive, send)

    async def http(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError
