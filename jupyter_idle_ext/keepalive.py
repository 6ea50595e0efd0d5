"""What a user asks for: a keep-alive, an explicit, capped "I am away but need the server"
instead of a pinger; and "stop when done", which stops the server shortly after nothing works
any more instead of ``server_idle_timeout`` later.

Each request is logged, counted and emitted as an event; the tracker holds it, the policy decides
with it (a keep-alive holds off the idle shutdown, never ``max_server_age``).
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


class StopWhenDone:
    def __init__(
        self,
        tracker: ActivityTracker,
        *,
        delay: float,
        emit: Callable[[dict[str, Any]], None],
        log: Any,
    ) -> None:
        self.tracker = tracker
        self.delay = delay
        self.emit = emit
        self.log = log

    def request(self) -> dict[str, Any]:
        if self.tracker.set_stop_when_done(True):
            self.log.warning(
                "Stop when done: the server shuts down %g s after nothing works any more.",
                self.delay,
            )
            self.emit(
                {
                    "action": "stop_when_done_requested",
                    "kind": "server",
                    "id": "",
                    "reason": f"a user asked; {self.delay:g} s after nothing works any more",
                    "rule": "stop_when_done",
                }
            )
        assert self.tracker.stop_when_done is not None
        return {"since": self.tracker.isoformat(self.tracker.stop_when_done), "delay": self.delay}

    def cancel(self) -> bool:
        cancelled = self.tracker.set_stop_when_done(False)
        if cancelled:
            self.log.warning("Stop when done cancelled: the usual idle rules apply again.")
            self.emit(
                {
                    "action": "stop_when_done_cancelled",
                    "kind": "server",
                    "id": "",
                    "reason": "a user cancelled it",
                    "rule": "stop_when_done",
                }
            )
        return cancelled
