"""Document writes as activity: saves (each upload chunk, new files), renames, copies, deletes.

A person writing in JupyterLab executes nothing, yet works: the editor's autosave writes the
document (only when it changed), and with real-time collaboration the server saves it itself.
Both go through the contents manager, which emits jupyter_server's ``contents_service`` events;
reads (``get``) never count, nor does any other request a tab makes (workspace PUTs, polling).
A contents manager that emits no events (a third-party one overriding ``save``) is still
covered: its write methods are wrapped on the instance, so a save counts either way.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable

from .activity import ActivityTracker
from .metrics import ACTIVITY

CONTENTS_SCHEMA = "https://events.jupyter.org/jupyter_server/contents_service/v1"

# contents_service actions that write, and how a person reads them; "get" is not one
WRITES = {
    "save": "saved",
    "create": "created",
    "upload": "uploaded",
    "rename": "renamed",
    "copy": "copied",
    "delete": "deleted",
}
# the contents manager methods that write, with the argument holding the path they write
WRAPPED = {"save": ("save", "path"), "rename": ("rename", "new_path"), "copy": ("copy", "to_path")}
WRAPPED_DELETE = ("delete", "path")


class DocumentWatcher:
    """Records document writes from the contents manager into an ActivityTracker."""

    def __init__(self, contents_manager: Any, event_logger: Any, tracker: ActivityTracker) -> None:
        self.cm = contents_manager
        self.event_logger = event_logger
        self.tracker = tracker
        self._wrapped: list[str] = []
        if event_logger is not None:
            event_logger.add_listener(schema_id=CONTENTS_SCHEMA, listener=self._on_event)
        for action, (method, argument) in (*WRAPPED.items(), ("delete", WRAPPED_DELETE)):
            self._wrap(method, argument, WRITES[action])

    def record(self, path: str, action: str) -> None:
        self.tracker.touch_document(path.strip("/") or "/", action)
        ACTIVITY.labels("document").inc()

    async def _on_event(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        action = WRITES.get(data.get("action", ""))
        if action is not None:
            self.record(str(data.get("path", "")), action)

    def _wrap(self, method: str, argument: str, action: str) -> None:
        original = getattr(self.cm, method, None)
        if original is None:
            return
        signature = inspect.signature(original)

        def done(result: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            # the model written says where (a copy without a target picks its own name)
            path = result.get("path") if isinstance(result, dict) else None
            if not isinstance(path, str):
                try:
                    path = str(signature.bind(*args, **kwargs).arguments.get(argument, ""))
                except TypeError:
                    path = ""
            self.record(path, action)

        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                result = await original(*args, **kwargs)
                done(result, args, kwargs)
                return result

            wrapper = async_wrapper
        else:

            @functools.wraps(original)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                result = original(*args, **kwargs)
                if inspect.isawaitable(result):
                    return _then(result, lambda r: done(r, args, kwargs))
                done(result, args, kwargs)
                return result

            wrapper = sync_wrapper
        setattr(self.cm, method, wrapper)
        self._wrapped.append(method)

    def close(self) -> None:
        for method in self._wrapped:
            # the wrapper is an instance attribute over the class's method
            self.cm.__dict__.pop(method, None)
        self._wrapped = []
        if self.event_logger is not None:
            # already removed, or a jupyter_events that cannot remove listeners
            with contextlib.suppress(Exception):
                self.event_logger.remove_listener(
                    schema_id=CONTENTS_SCHEMA, listener=self._on_event
                )


async def _then(awaitable: Any, callback: Callable[[Any], None]) -> Any:
    result = await awaitable
    callback(result)
    return result
