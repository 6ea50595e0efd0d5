"""The public API through which another extension reports activity of its own.

A handler of another extension calls ``record_activity(self.settings, "my-app")`` when a person
did something there, or ``set_busy(self.settings, "my-app", True)`` while work it runs goes on
(then ``False``); both are re-exported by the package (``from jupyter_idle_ext import ...``).
Without the extension loaded they do nothing.
"""

from __future__ import annotations

from typing import Any

from ..activity import ActivityTracker
from . import BaseSource, Context

# where the running extension keeps its tracker in the server's settings
SETTINGS_KEY = "jupyter_idle_ext_tracker"


def get_tracker(settings: dict[str, Any]) -> ActivityTracker | None:
    """The running extension's activity tracker, or None when the extension is not loaded."""
    tracker = settings.get(SETTINGS_KEY)
    return tracker if isinstance(tracker, ActivityTracker) else None


def record_activity(settings: dict[str, Any], source: str) -> None:
    """Count something a user did through another extension as activity, now."""
    tracker = get_tracker(settings)
    if tracker is not None:
        tracker.touch("extension", source)


def set_busy(settings: dict[str, Any], source: str, busy: bool) -> None:
    """Mark a source as working (the server is never idle while it is) or done."""
    tracker = get_tracker(settings)
    if tracker is not None:
        tracker.set_busy("extension", source, busy)


class ExtensionApi(BaseSource):
    """Makes the tracker reachable from the server's settings for as long as it runs."""

    name = "api"

    def __init__(self, settings: dict[str, Any], tracker: ActivityTracker) -> None:
        self.settings = settings
        settings[SETTINGS_KEY] = tracker

    def explain(self) -> str:
        return "what other extensions report (jupyter_idle_ext.record_activity, set_busy)"

    async def stop(self) -> None:
        self.settings.pop(SETTINGS_KEY, None)


def make(context: Context) -> ExtensionApi:
    return ExtensionApi(context.serverapp.web_app.settings, context.tracker)
