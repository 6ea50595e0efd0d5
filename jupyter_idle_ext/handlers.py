"""REST handlers: the status document, the user's keep-alive and "stop when done".

None of them is activity: reading the status must never delay a shutdown, and a keep-alive or
"stop when done" is its own signal.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .metrics import KEEPALIVES

# a keep-alive request is a few bytes; anything bigger is refused before it is parsed
MAX_BODY = 4096


class IdleHandler(APIHandler):
    """Base: never counted as activity, finds the running extension."""

    _track_activity = False

    @property
    def idle_app(self) -> Any:
        return self.settings["jupyter_idle_ext"]


class StatusHandler(IdleHandler):
    auth_resource = "jupyter_idle_ext:status"

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(json.dumps(await self.idle_app.status()))


class KeepaliveHandler(IdleHandler):
    auth_resource = "jupyter_idle_ext:keepalive"

    def _refuse(self, code: int, reason: str) -> NoReturn:
        KEEPALIVES.labels("refused").inc()
        raise web.HTTPError(code, reason)

    def _seconds(self) -> float:
        if len(self.request.body) > MAX_BODY:
            self._refuse(413, f"body larger than {MAX_BODY} bytes")
        try:
            body = json.loads(self.request.body or b"null")
        except (ValueError, RecursionError):
            self._refuse(400, 'body must be JSON like {"seconds": 3600}')
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not math.isfinite(seconds)
            or seconds <= 0
        ):
            self._refuse(400, '"seconds" must be a number of seconds > 0')
        return float(seconds)

    @property
    def keepalive(self) -> Any:
        keepalive = self.idle_app.keepalive
        if keepalive is None:
            raise web.HTTPError(503, "jupyter_idle_ext is not running")
        return keepalive

    @web.authenticated
    @authorized
    def post(self) -> None:
        cap = self.idle_app.max_keepalive
        if cap <= 0:
            self._refuse(403, "keep-alive is disabled (IdleExtension.max_keepalive = 0)")
        seconds = self._seconds()
        if seconds > cap:
            self._refuse(
                400,
                f"seconds must be at most {cap:g} (IdleExtension.max_keepalive); got {seconds:g}",
            )
        self.finish(json.dumps({"keepalive": self.keepalive.grant(seconds)}))

    @web.authenticated
    @authorized
    def delete(self) -> None:
        self.finish(json.dumps({"cancelled": self.keepalive.cancel()}))


class StopWhenDoneHandler(IdleHandler):
    """POST: stop the server shortly after nothing works any more; DELETE: cancel that."""

    auth_resource = "jupyter_idle_ext:stop_when_done"

    @property
    def stop_when_done(self) -> Any:
        requests = self.idle_app.stop_when_done
        if requests is None:
            raise web.HTTPError(503, "jupyter_idle_ext is not running")
        return requests

    @web.authenticated
    @authorized
    def post(self) -> None:
        if len(self.request.body) > MAX_BODY:
            raise web.HTTPError(413, f"body larger than {MAX_BODY} bytes")
        if self.request.body.strip() not in (b"", b"{}", b"null"):
            raise web.HTTPError(400, "stop-when-done takes no body (or {})")
        self.finish(json.dumps({"stop_when_done": self.stop_when_done.request()}))

    @web.authenticated
    @authorized
    def delete(self) -> None:
        self.finish(json.dumps({"cancelled": self.stop_when_done.cancel()}))


default_handlers = [
    (r"/api/idle", StatusHandler),
    (r"/api/idle/keepalive", KeepaliveHandler),
    (r"/api/idle/stop-when-done", StopWhenDoneHandler),
]
