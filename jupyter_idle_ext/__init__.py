"""jupyter_idle_ext: idle culling for Jupyter servers that decides on execution activity.

Other extensions report activity of their own through :func:`record_activity` and
:func:`set_busy`, with the server's ``web_app.settings`` (a handler's ``self.settings``);
see ``sources/api.py``.
"""

from __future__ import annotations

from typing import Any

from .app import IdleExtension
from .sources.api import get_tracker, record_activity, set_busy

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "jupyter_idle_ext", "app": IdleExtension}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """For ``jupyter labextension develop``: the frontend built in place (an installed wheel
    carries it in share/jupyter/labextensions)."""
    return [{"src": "labextension", "dest": "jupyter-idle-ext"}]


__all__ = ["IdleExtension", "__version__", "get_tracker", "record_activity", "set_busy"]
