"""jupyter_idle_ext: idle culling for Jupyter servers that decides on execution activity.

Other extensions report activity of their own through :func:`record_activity` and
:func:`set_busy`, with the server's ``web_app.settings`` (a handler's ``self.settings``).
"""

from __future__ import annotations

from typing import Any

from .activity import ActivityTracker
from .app import SETTINGS_KEY, IdleExtension

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "jupyter_idle_ext", "app": IdleExtension}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """For ``jupyter labextension develop``: the frontend built in place (an installed wheel
    carries it in share/jupyter/labextensions)."""
    return [{"src": "labextension", "dest": "jupyter-idle-ext"}]


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


__all__ = ["IdleExtension", "__version__", "get_tracker", "record_activity", "set_busy"]
