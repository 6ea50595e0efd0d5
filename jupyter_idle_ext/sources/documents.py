"""Document writes as activity: saves (each upload chunk, new files), renames, copies, deletes.

A person writing in JupyterLab executes nothing, yet works: the editor's autosave writes the
document (only when it changed), and with real-time collaboration the server saves it itself.
Both go through the contents manager, which emits jupyter_server's ``contents_service`` events
through its own ``emit`` method; reads (``get``) never count, nor does any other request a tab
makes (workspace PUTs, polling).

The events are read where the contents manager emits them (its ``emit``, wrapped on the
instance through compat.replace_method), not through a jupyter_events listener: with a listener for the schema, jupyter_events
deep-copies and validates every contents event, each read of a polling tab included, a cost
measurable on every save (benchmarks/bench_apps.py measures saves). A contents manager that emits no
events (a third-party one overriding ``save``) is still covered: its write methods are wrapped
on the instance too, and count when the call emitted no write event of its own.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from ..activity import ActivityTracker
from ..compat import Capabilities, Undo, replace_method
from ..metrics import ACTIVITY
from . import BaseSource, Context

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


class DocumentWatcher(BaseSource):
    """Records document writes from the contents manager into an ActivityTracker."""

    name = "documents"

    def __init__(
        self,
        contents_manager: Any,
        tracker: ActivityTracker,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.cm = contents_manager
        self.tracker = tracker
        self.capabilities = capabilities or Capabilities(None)
        self._undo: list[Undo] = []
        # write events seen at the contents manager's emit: a write method whose call emitted
        # one is not recorded a second time
        self._emitted = 0
        # without emit (jupyter_server < 2.9, a custom manager), each write is read at its method
        self._replace("emit", self._observe_emit, lost=None)
        for action, (method, argument) in (*WRAPPED.items(), ("delete", WRAPPED_DELETE)):
            self._replace(
                method,
                functools.partial(self._observe, argument=argument, action=WRITES[action]),
                lost=(
                    f"Document writes through {type(contents_manager).__name__}.{method} "
                    "cannot be seen (it has no such method)",
                    f"a {action} does not delay the idle shutdown",
                ),
            )

    def _replace(
        self, method: str, make: Callable[[Any], Any], lost: tuple[str, str] | None
    ) -> None:
        undo = replace_method(self.cm, method, make, self.capabilities, lost)
        if undo is not None:
            self._undo.append(undo)

    def record(self, path: str, action: str) -> None:
        self.tracker.touch_document(path.strip("/") or "/", action)
        ACTIVITY.labels("document").inc()

    def _observe_emit(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def emit(*args: Any, **kwargs: Any) -> Any:
            data = kwargs.get("data", args[0] if args else None)
            if isinstance(data, dict) and data.get("action") in WRITES:
                self._emitted += 1
                self.record(str(data.get("path", "")), WRITES[data["action"]])
            return original(*args, **kwargs)

        return emit

    def _observe(
        self, original: Callable[..., Any], argument: str, action: str
    ) -> Callable[..., Any]:
        signature = inspect.signature(original)

        def done(result: Any, args: tuple[Any, ...], kwargs: dict[str, Any], before: int) -> None:
            if self._emitted != before:
                return  # the manager emitted its event (recorded at emit)
            # the model written says where (a copy without a target picks its own name)
            path = result.get("path") if isinstance(result, dict) else None
            if not isinstance(path, str):
                try:
                    path = str(signature.bind(*args, **kwargs).arguments.get(argument, ""))
                except TypeError:
                    path = ""
            self.record(path, action)

        if inspect.iscoroutinefunction(original):

            @functools.wraps(original)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                before = self._emitted
                result = await original(*args, **kwargs)
                done(result, args, kwargs, before)
                return result

            return async_wrapper

        @functools.wraps(original)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            before = self._emitted
            result = original(*args, **kwargs)
            if inspect.isawaitable(result):
                return _then(result, lambda r: done(r, args, kwargs, before))
            done(result, args, kwargs, before)
            return result

        return sync_wrapper

    def explain(self) -> str:
        return "document writes"

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []


def make(context: Context) -> DocumentWatcher:
    return DocumentWatcher(
        context.serverapp.contents_manager, context.tracker, context.capabilities
    )


async def _then(awaitable: Any, callback: Callable[[Any], None]) -> Any:
    result = await awaitable
    callback(result)
    return result
