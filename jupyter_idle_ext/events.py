"""Events: every action also goes to the server's event bus (``/api/events/subscribe``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from jupyter_events.schema_registry import SchemaRegistryException

SCHEMA_ID = "https://events.jupyter.org/jupyter_idle_ext/idle_actions/v1"
SCHEMA_PATH = Path(__file__).parent / "event_schemas" / "idle_actions" / "v1.yaml"


def register_schema(serverapp: Any) -> None:
    event_logger = getattr(serverapp, "event_logger", None)
    if event_logger is None:
        return
    # already registered when a second server runs in the same process (tests)
    with contextlib.suppress(SchemaRegistryException):
        event_logger.register_event_schema(SCHEMA_PATH)


def emit_event(serverapp: Any, data: dict[str, Any], log: Any) -> None:
    """Emit an action event; an event bus problem never stops an action."""
    event_logger = getattr(serverapp, "event_logger", None)
    if event_logger is None:
        return
    try:
        event_logger.emit(schema_id=SCHEMA_ID, data=data)
    except Exception as e:
        log.debug("Could not emit %s event: %s", data.get("action"), e)
