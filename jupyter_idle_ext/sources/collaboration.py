"""Typing in a collaborative document (jupyter-collaboration) as activity, at each keystroke.

With real-time collaboration the browser does not save: it sends its edits as Y updates over the
room's websocket, and the server saves the document a moment later (``document_save_delay``),
which documents.py counts. Counting the edits themselves closes the gap between a keystroke and
its save, so a shutdown can never come between them. Only client -> server document updates
count (y-protocols' sync message, update step: first bytes 0, 2): never the awareness (presence,
cursor) messages an untouched tab keeps sending, nor the sync handshake of a (re)connecting tab.
Only active when jupyter_server_ydoc is loaded.
"""

from __future__ import annotations

from typing import Any

from ..activity import ActivityTracker
from ..compat import ObservedRoutes
from ..metrics import ACTIVITY
from . import BaseSource, Context

# y-protocols: message type SYNC (0), sync step "update" (2); both one-byte var-uints
DOCUMENT_UPDATE = b"\x00\x02"


class CollaborationWatcher(BaseSource):
    """Records edits arriving in jupyter_server_ydoc's rooms into an ActivityTracker."""

    name = "collaboration"

    def __init__(self, web_app: Any, tracker: ActivityTracker) -> None:
        from jupyter_server_ydoc.handlers import YDocWebSocketHandler

        self.web_app = web_app
        self.tracker = tracker
        self.routes = ObservedRoutes(web_app, YDocWebSocketHandler, self._observe)

    def record(self, room_id: str) -> None:
        self.tracker.touch_document(self._path(room_id), "edited")
        ACTIVITY.labels("collaboration").inc()

    def _path(self, room_id: str) -> str:
        # a document room is "format:type:file id"; jupyter_server_fileid knows the path
        file_id = room_id.split(":", 2)[-1]
        fileids = self.web_app.settings.get("file_id_manager")
        try:
            path = fileids.get_path(file_id) if fileids is not None else None
        except Exception:
            path = None
        return str(path) if path else room_id

    def _observe(self, handler_class: type) -> type:
        watcher = self

        class Observed(handler_class):  # type: ignore[valid-type,misc,unused-ignore]
            def on_message(self, message: Any) -> Any:
                if isinstance(message, bytes) and message.startswith(DOCUMENT_UPDATE):
                    room_id = self.path_args[0] if self.path_args else ""
                    watcher.record(room_id)
                return super().on_message(message)

        Observed.__name__ = Observed.__qualname__ = handler_class.__name__
        return Observed

    def explain(self) -> str:
        return "collaborative edits"

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        self.routes.close()


def collaboration_watcher(web_app: Any, tracker: ActivityTracker) -> CollaborationWatcher | None:
    """The watcher when jupyter_server_ydoc serves rooms in this server, else None."""
    try:
        watcher = CollaborationWatcher(web_app, tracker)
    except ImportError:
        return None
    if not watcher.routes:
        return None
    return watcher


def make(context: Context) -> CollaborationWatcher | None:
    return collaboration_watcher(context.serverapp.web_app, context.tracker)
