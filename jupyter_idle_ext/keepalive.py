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


def server_event(action: str, reason: str, rule: str, **more: Any) -> dict[str, Any]:
    """An idle_actions event about the server (not a kernel or terminal)."""
    return {"action": action, "kind": "server", "id": "", "reason": reason, "rule": rule, **more}


class Keepalive:
    def __init__(
        self,
        tracker: ActivityTracker,
        *,
        max_server_age: float,
        emit: Callable[[dict[str, Any]], None],
        log: Any,
    ) -> None:
        self.tracker = tracker
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
            server_event(
                "keepalive_granted", f"a user asked for {seconds:g} s", "keepalive", at=until
            )
        )
        return {"until": until, "seconds": seconds}

    def cancel(self) -> bool:
        """End the keep-alive; True when one was in force."""
        cancelled = self.tracker.cancel_keepalive()
        if cancelled:
            self.log.warning("Keep-alive cancelled.")
            KEEPALIVES.labels("cancelled").inc()
            self.emit(server_event("keepalive_cancelled", "a user cancelled it", "keepalive"))
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
                server_event(
                    "stop_when_done_requested",
                    f"a user asked; {self.delay:g} s after nothing works any more",
                    "stop_when_done",
                )
            )
        assert self.tracker.stop_when_done is not None
        return {"since": self.tracker.isoformat(self.tracker.stop_when_done), "delay": self.delay}

    def cancel(self) -> bool:
        cancelled = self.tracker.set_stop_when_done(False)
        if cancelled:
            self.log.warning("Stop when done cancelled: the usual idle rules apply again.")
            self.emit(
                server_event("stop_when_done_cancelled", "a user cancelled it", "stop_when_done")
            )
        return cancelled
