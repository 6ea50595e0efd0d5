"""Terminals of jupyter_server_terminals as a source of activity, followed at the pty: output of
their programs, including the echo of typed keys, and never websocket traffic."""

from __future__ import annotations

from typing import Any

from ..activity import ActivityTracker
from ..compat import Capabilities, watch_pty_reads
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
        # each terminal's name by the identity of its PtyWithClients, and those being culled
        self._names: dict[int, str] = {}
        self._stopping: dict[str, int] = {}
        self._original_hook: Any = None

        def observe(original: Any) -> Any:
            self._original_hook = original

            def pre_pty_read_hook(ptywclients: Any) -> None:
                # output of the terminal's programs, which includes the echo of every typed key
                original(ptywclients)
                name = self._name_of(ptywclients)
                if name is not None and self._stopping.get(name) != id(ptywclients):
                    self.tracker.touch("terminal", name)

            return pre_pty_read_hook

        # without the hook nothing of a terminal is seen: it is never culled
        self._undo = watch_pty_reads(terminal_manager, observe, capabilities)
        self.seen = self._undo is not None

    def _name_of(self, ptywclients: Any) -> str | None:
        name = self._names.get(id(ptywclients))
        if name is not None and self.tm.terminals.get(name) is ptywclients:
            return name
        for name, term in self.tm.terminals.items():
            if term is ptywclients:
                self._names[id(ptywclients)] = str(name)
                return str(name)
        return None

    def sync(self) -> None:
        current = set(self.tm.terminals)
        known = {r.id for r in self.tracker.of_kind("terminal")}
        for name in current - known:
            self.tracker.add("terminal", name, name)
        for name in known - current:
            self.tracker.remove("terminal", name)
        if known != current:
            self._stopping = {n: i for n, i in self._stopping.items() if n in current}
            self._names = {
                id(term): str(name) for name, term in self.tm.terminals.items() if name in current
            }

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
            self._stopping[name] = id(term)

    def close(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

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
