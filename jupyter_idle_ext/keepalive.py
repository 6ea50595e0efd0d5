"""The user's keep-alive: an explicit, capped "I am away but need the server" instead of a pinger.

Granting and cancelling are logged, counted and emitted as events; the tracker holds the time, the
policy decides with it (it holds off the idle shutdown, never ``max_server_age``).
"""

from __future__ import annotations

from typing import Any, Callable

from .activity import ActivityTracker
from .metrics import KEEPALIVES


class Keepalive:
    def __init__(
        self,
        tracker: ActivityTracker,
        *,
        cap: float,
        max_server_age: float,
        emit: Callable[[dict[str, Any]], None],
        log: Any,
    ) -> None:
        self.tracker = tracker
        self.cap = cap
        self.max_server_age = max_server_age
        self.emit = emit
        self.log = log

    def grant(self, seconds: float) -> dict[str, Any]:
        """Hold off the idle shutdown for ``seconds`` (the caller checked it against the cap)."""
        until = self.tracker.isoformat(self.tracker.keep_alive(seconds))
        self.log.warning(
            "Keep-alive granted: no idle shutdown before %s (%g s)%s.",
            until,
            seconds,
            "; max_server_age still applies" if self.max_server_age > 0 else "",
        )
        KEEPALIVES.labels("granted").inc()
        self.emit(
            {
                "action": "keepalive_granted",
                "kind": "server",
                "id": "",
                "reason": f"a user asked for {seconds:g} s",
                "rule": "keepalive",
                "at": until,
            }
        )
        return {"until": until, "seconds": seconds}

    def cancel(self) -> bool:
        """End the keep-alive; True when one was in force."""
        cancelled = self.tracker.cancel_keepalive()
        if cancelled:
            self.log.warning("Keep-alive cancelled.")
            KEEPALIVES.labels("cancelled").inc()
            self.emit(
                {
                    "action": "keepalive_cancelled",
                    "kind": "server",
                    "id": "",
                    "reason": "a user cancelled it",
                    "rule": "keepalive",
                }
            )
        return cancelled
