"""Kernels on a gateway (Jupyter Enterprise Gateway, Kernel Gateway): their activity, read where
the server relays their messages.

A server started with ``--gateway-url`` runs no kernel itself: jupyter_server's IOPub watcher
never runs, and the kernel model it keeps (``last_activity``, ``execution_state``,
``connections``) only moves when something lists the kernels, and then copies the gateway's own
view, in which Enterprise Gateway counts every IOPub message (a reconnecting tab's
``kernel_info`` too). So neither is read here. Instead each message the gateway sends a tab is
judged as jupyter_server judges a local kernel's (``track_message_type``): execution, output of a
running cell, completion and inspection count; ``kernel_info``/``comm_info`` and their status
bursts do not. The busy period comes from the status messages a tracked request causes.

While no tab is connected nothing is relayed: then the gateway's ``execution_state`` (polled
with the kernel's liveness, see ``kernels.py``) says whether a cell still runs. Enterprise Gateway
(jupyter_server 1.x) takes that state from every status message, so a request on the control
channel answered while a cell runs (a debugger's, the gateway's own ``kernel_info`` at connect)
leaves its model saying "idle" until the cell ends. The relay sees those messages too: when the
gateway's state was already "idle" while the busy period ran, its "idle" ends that period only
once its ``last_activity`` shows a message after the last one relayed (a cell's end), with a
margin for the two machines' clocks that errs to busy. Open connections are counted at the
relay, one per tab of this server (the gateway's count includes its other clients).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable

from ..activity import ActivityTracker
from ..compat import Capabilities, observe_gateway_relay

_DECODER = json.JSONDecoder()
# how far the gateway's clock may run ahead of this server's: a gateway message this much after
# the last one relayed is taken as new (a later one ends a busy period, see ``polled``)
CLOCK_MARGIN = 1.0


def message_types(raw: str | bytes) -> tuple[str, str | None, str | None, str | None]:
    """(channel, msg_type, parent msg_type, execution_state) of a relayed message.

    Only the small headers are decoded where the frame has the gateway's key order (header,
    ..., content, channel last): a megabyte of output costs what a status message costs.
    """
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    try:
        start = raw.index('"header"')
        header, _ = _DECODER.raw_decode(raw, raw.index("{", start))
        start = raw.index('"parent_header"')
        parent, _ = _DECODER.raw_decode(raw, raw.index("{", start))
        at = raw.rindex('"channel"')
        channel = raw[raw.index('"', at + 9) + 1 :].split('"', 1)[0]
        state = None
        if header.get("msg_type") == "status":
            at = raw.index('"execution_state"')
            state = raw[raw.index('"', at + 17) + 1 :].split('"', 1)[0]
    except (ValueError, AttributeError):
        try:
            msg = json.loads(raw)
        except ValueError:
            return "", None, None, None
        header, parent = msg.get("header") or {}, msg.get("parent_header") or {}
        channel = msg.get("channel") or ""
        state = (msg.get("content") or {}).get("execution_state")
    return channel, header.get("msg_type"), (parent or {}).get("msg_type"), state


class GatewayRelay:
    """Reads the messages jupyter_server relays between tabs and gateway kernels."""

    def __init__(
        self,
        web_app: Any,
        kernel_manager: Any,
        tracker: ActivityTracker,
        capabilities: Capabilities,
        log: Any,
    ) -> None:
        self.km = kernel_manager
        self.tracker = tracker
        self.log = log
        # open relays (tabs) per kernel id
        self.open: dict[str, int] = {}
        # each kernel's state as its relayed status messages tell it
        self.states: dict[str, str] = {}
        # each kernel's state as the gateway's own model has it (the last status relayed, of any
        # request), and when (wall clock) the last message was relayed
        self.gateway_states: dict[str, str] = {}
        self.last_relayed: dict[str, float] = {}
        track = getattr(kernel_manager, "track_message_type", None)
        self.track: Callable[[str | None], bool] = (
            track if callable(track) else (lambda msg_type: True)
        )
        self.url = _gateway_url()
        # None when the relay cannot be observed: then the kernels are not followed (kernels.py
        # keeps them, never culled)
        self.restore = observe_gateway_relay(web_app, self._observe, capabilities)

    @property
    def seen(self) -> bool:
        return self.restore is not None

    def connections(self, kernel_id: str) -> int:
        return self.open.get(kernel_id, 0)

    def relayed(self, kernel_id: str, raw: str | bytes) -> None:
        """One message from the gateway to a tab."""
        channel, msg_type, parent_type, state = message_types(raw)
        if channel != "iopub" or msg_type is None:
            return
        self.last_relayed[kernel_id] = self.tracker.wall_clock()
        if state is not None:
            self.gateway_states[kernel_id] = state
        if state is not None and self.track(parent_type):
            self.set_state(kernel_id, state)  # both ends of a busy period are activity
        elif (
            self.track(msg_type) or self.track(parent_type) or self.states.get(kernel_id) == "busy"
        ):
            self.tracker.touch("kernel", kernel_id)

    def set_state(self, kernel_id: str, state: str) -> None:
        """The kernel is busy or idle (from a relayed status, or the gateway's model)."""
        before = self.states.get(kernel_id)
        if state == before:
            return
        self.states[kernel_id] = state
        if state == "busy":
            self.tracker.set_busy("kernel", kernel_id, True)
        elif before == "busy":
            # the end of a busy period; a first "idle" (starting, a first poll) is not activity
            self.tracker.set_busy("kernel", kernel_id, False)

    def polled(
        self, kernel_id: str, state: str | None, last_activity: datetime | None = None
    ) -> None:
        """The gateway's model was read: with no tab connected, its state is all there is."""
        if self.open.get(kernel_id, 0) or state not in ("busy", "idle"):
            return
        if (
            state == "idle"
            and self.states.get(kernel_id) == "busy"
            and self.gateway_states.get(kernel_id) == "idle"
            and not self._newer(kernel_id, last_activity)
        ):
            # the model said "idle" already while the cell ran, and nothing came since the tab
            # left: the cell still runs, as far as anyone can tell
            return
        self.set_state(kernel_id, state)

    def _newer(self, kernel_id: str, last_activity: datetime | None) -> bool:
        """Whether the gateway had a message from the kernel after the last one relayed (not
        known: no)."""
        seen = self.last_relayed.get(kernel_id)
        if seen is None or last_activity is None:
            return False
        try:
            return last_activity.timestamp() > seen + CLOCK_MARGIN
        except (AttributeError, TypeError, ValueError, OverflowError):
            return False

    def forget(self, kernel_id: str) -> None:
        self.open.pop(kernel_id, None)
        self.states.pop(kernel_id, None)
        self.gateway_states.pop(kernel_id, None)
        self.last_relayed.pop(kernel_id, None)

    def _observe(self, connection_class: type) -> type:
        relay = self

        class Observed(connection_class):  # type: ignore[valid-type,misc,unused-ignore]
            _idle_ext_open = False

            async def connect(self) -> Any:
                # called again on each reconnect to the gateway: one tab counts once
                if not self._idle_ext_open:
                    self._idle_ext_open = True
                    relay.open[self.kernel_id] = relay.open.get(self.kernel_id, 0) + 1
                return await super().connect()

            def disconnect(self) -> Any:
                if self._idle_ext_open:
                    self._idle_ext_open = False
                    left = relay.open.get(self.kernel_id, 1) - 1
                    relay.open[self.kernel_id] = max(0, left)
                return super().disconnect()

            def handle_outgoing_message(self, incoming_msg: Any, *args: Any) -> Any:
                try:
                    relay.relayed(self.kernel_id, incoming_msg)
                except Exception as e:  # never lose the tab's message to our reading of it
                    relay.log.debug("Could not read a relayed message: %s", e)
                return super().handle_outgoing_message(incoming_msg, *args)

        Observed.__name__ = Observed.__qualname__ = connection_class.__name__
        return Observed

    def close(self) -> None:
        if self.restore is not None:
            self.restore()
            self.restore = None


def _gateway_url() -> str:
    try:
        from jupyter_server.gateway.gateway_client import GatewayClient

        return str(GatewayClient.instance().url or "")
    except Exception:
        return ""
