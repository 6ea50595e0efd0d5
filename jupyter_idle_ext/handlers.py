"""REST handlers: the status document, the user's keep-alive and "stop when done", a person's
edits in a page, and the unsaved documents of the open pages.

The requests themselves are never activity: reading the status must never delay a shutdown, a
keep-alive or "stop when done" is its own signal, and an edit counts because a person typed
(the page sends it on input events only), not because a request came.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from .metrics import ACTIVITY, KEEPALIVES
from .unsaved import ReportError, parse_report

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
        try:
            body = _json_body(self, MAX_BODY, '{"seconds": 3600}')
        except web.HTTPError:
            KEEPALIVES.labels("refused").inc()
            raise
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
        if _json_body(self, MAX_BODY, "{}") not in (None, {}):
            raise web.HTTPError(400, "stop-when-done takes no body (or {})")
        self.finish(json.dumps({"stop_when_done": self.stop_when_done.request()}))

    @web.authenticated
    @authorized
    def delete(self) -> None:
        self.finish(json.dumps({"cancelled": self.stop_when_done.cancel()}))


def _json_body(handler: APIHandler, limit: int | None, example: str) -> Any:
    if limit is not None and len(handler.request.body) > limit:
        raise web.HTTPError(413, f"body larger than {limit} bytes")
    try:
        return json.loads(handler.request.body or b"null")
    except (ValueError, RecursionError):
        raise web.HTTPError(400, f"body must be JSON like {example}") from None


class EditHandler(IdleHandler):
    """POST {"path": ...}: a person typed into that open document (saved or not)."""

    auth_resource = "jupyter_idle_ext:edit"

    @web.authenticated
    @authorized
    def post(self) -> None:
        body = _json_body(self, MAX_BODY, '{"path": "notes.md"}')
        path = body.get("path") if isinstance(body, dict) else None
        if not isinstance(path, str) or not path.strip("/") or len(path) > MAX_BODY:
            raise web.HTTPError(400, '"path" must be the path of the document typed into')
        self.idle_app.tracker.touch_document(path.strip("/"), "edited")
        ACTIVITY.labels("edit").inc()
        self.finish(json.dumps({"path": path.strip("/")}))


class UnsavedHandler(IdleHandler):
    """POST a page's unsaved documents (with their content near a stop), to be saved before an
    idle stop; see unsaved.py."""

    auth_resource = "jupyter_idle_ext:unsaved"

    @web.authenticated
    @authorized
    def post(self) -> None:
        body = _json_body(self, None, '{"page": "...", "documents": []}')
        try:
            page, drafts, saved = parse_report(body)
        except ReportError as e:
            raise web.HTTPError(400, str(e)) from None
        unsaved = self.idle_app.unsaved
        if unsaved is None:
            raise web.HTTPError(503, "jupyter_idle_ext is not running")
        unsaved.report(page, drafts, saved)
        self.finish(json.dumps({**unsaved.status(), "copies": unsaved.copies(page)}))


default_handlers = [
    (r"/api/idle", StatusHandler),
    (r"/api/idle/keepalive", KeepaliveHandler),
    (r"/api/idle/stop-when-done", StopWhenDoneHandler),
    (r"/api/idle/edit", EditHandler),
    (r"/api/idle/unsaved", UnsavedHandler),
]
