"""Terminals of jupyter_server_terminals as a source of activity, followed at the pty: output of
their programs, including the echo of typed keys, and never websocket traffic."""

from __future__ import annotations

from typing import Any

from ..activity import ActivityTracker
from ..compat import Capabilities, pty_read_hook
from ..policy import TerminalState
from . import BaseSource, Context


class TerminalWatcher(BaseSource):
    """Follows jupyter_server_terminals' terminals at the pty into an ActivityTracker."""

    name = "terminals"

    def __init__(
        self,
        terminal_manager: Any,
        tracker: ActivityTracker,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.tm = terminal_manager
        self.tracker = tracker
        capabilities = capabilities or Capabilities(None)
        # without the hook nothing of a terminal is seen: it is never culled
        self.seen = pty_read_hook(terminal_manager, capabilities)
        if not self.seen:
            return
        self._original_hook = terminal_manager.pre_pty_read_hook

        def pre_pty_read_hook(ptywclients: Any) -> None:
            # output of the terminal's programs, which includes the echo of every typed key
            self._original_hook(ptywclients)
            name = getattr(ptywclients, "_idle_ext_name", None)
            if name is None:
                name = self._name_of(ptywclients)
            if name is not None and not getattr(ptywclients, "_idle_ext_stopping", False):
                self.tracker.touch("terminal", name)

        terminal_manager.pre_pty_read_hook = pre_pty_read_hook

    def _name_of(self, ptywclients: Any) -> str | None:
        for name, term in self.tm.terminals.items():
            if term is ptywclients:
                ptywclients._idle_ext_name = name
                return str(name)
        return None

    def sync(self) -> None:
        current = set(self.tm.terminals)
        known = {r.id for r in self.tracker.of_kind("terminal")}
        for name in current - known:
            self.tracker.add("terminal", name, name)
        for name in known - current:
            self.tracker.remove("terminal", name)

    def states(self) -> tuple[TerminalState, ...]:
        return tuple(
            TerminalState(r.id, r.last_activity, r.computing_since, r.computing, self.seen)
            for r in self.tracker.of_kind("terminal")
        )

    def owns(self) -> dict[int, tuple[str, str]]:
        """The process id of each terminal's shell."""
        found = {}
        for name, term in list(self.tm.terminals.items()):
            pid = getattr(getattr(term, "ptyproc", None), "pid", None)
            if isinstance(pid, int):
                found[pid] = ("terminal", str(name))
        return found

    def stopping(self, name: str) -> None:
        """The terminal is being culled: what its shell prints on the way out is not activity."""
        term = self.tm.terminals.get(name)
        if term is not None:
            term._idle_ext_stopping = True

    def close(self) -> None:
        if self.seen:
            self.tm.pre_pty_read_hook = self._original_hook

    async def refresh(self, every: bool) -> None:
        self.sync()

    async def stop(self) -> None:
        self.close()


def make(context: Context) -> TerminalWatcher | None:
    """The source when jupyter_server_terminals runs in this server."""
    terminal_manager = context.serverapp.web_app.settings.get("terminal_manager")
    if not terminal_manager:
        return None
    return TerminalWatcher(terminal_manager, context.tracker, context.capabilities)
