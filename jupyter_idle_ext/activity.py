"""Activity: what each kernel, terminal and other source did, and when, on a monotonic clock.

This module keeps and records; it decides nothing, and it knows no source's insides: each source
(``sources/``) records into the tracker by itself. REST requests and websocket pings are never
recorded by any source, so they can never count.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from .policy import KernelState, ScheduledRun, Snapshot, SourceState, TerminalState

Clock = Callable[[], float]


@dataclass
class Record:
    """One source of activity: a kernel, a terminal, a document, a proxied app, or a source
    another extension registered."""

    kind: str
    id: str
    name: str
    last_activity: float
    busy_since: float | None = None
    # what it did last, for people: "saved", "input", ...
    detail: str = ""
    # a kernel or terminal whose process (or one it started) works: since when, and which
    computing_since: float | None = None
    computing: str | None = None
    # when its last busy period ended (a kernel's CPU then is its cell's, not a thread's)
    idle_since: float | None = None

    def describe(self) -> str:
        """The source as a person reads it in a reason: "notes.md saved", "rstudio: input"."""
        if self.kind == "document":
            return f"{self.name} {self.detail}".strip()
        if self.kind in ("kernel", "terminal"):
            return f"{self.kind} {self.id[:8]}"
        if self.kind == "process":
            return f"process {self.id.split('@')[0]} `{self.name}`"
        return f"{self.name}: {self.detail}" if self.detail else self.name


# the most documents a status lists (the most recently written ones)
MAX_DOCUMENTS = 20


class ActivityTracker:
    """The one place activity is kept; every consumer reads its snapshot.

    ``clock`` is monotonic (idle time), ``wall_clock`` is only used to turn a monotonic time into
    a timestamp for people and the Hub; both are seams for tests.
    """

    def __init__(self, clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self.started = clock()
        self.last_activity = self.started
        self.records: dict[tuple[str, str], Record] = {}
        # set when a source appears or a keep-alive changes, so the check loop looks again early
        # (other activity only moves deadlines later, so it needs no wake-up)
        self.changed = asyncio.Event()
        # called on every activity of the server with (when, the last activity before it): the
        # check loop (a warning in force is cancelled at once) and the Hub reporter (activity
        # after a quiet stretch is reported at once) listen
        self._listeners: list[Callable[[float, float], None]] = []
        # a user's keep-alive: the server is not shut down for idleness before this time
        self.keepalive_until: float | None = None
        # when a user asked to stop the server once nothing works any more, or None
        self.stop_when_done: float | None = None
        # the source of the server's last activity, to name it in reasons
        self.last_record: Record | None = None
        # the next run of each scheduled job (they run only while the server is up)
        self.scheduled: tuple[ScheduledRun, ...] = ()
        # moves on every change, so a reader knows whether the loop's last plan saw it
        self.generation = 0
        # set while the idle stop saves what pages left unsaved: those writes are the stop's
        # own work, not activity
        self.saving_for_stop = False

    # -- recording ---------------------------------------------------------------------------

    def _record(self, kind: str, id: str, name: str | None = None) -> Record:
        key = (kind, id)
        record = self.records.get(key)
        if record is None:
            record = Record(kind, id, name or id, self.clock())
            self.records[key] = record
            self.generation += 1
            self.changed.set()
        return record

    def set_saving_for_stop(self, on: bool) -> None:
        """While the idle stop saves what pages left unsaved, those writes are not activity."""
        self.saving_for_stop = on

    def serving(self) -> None:
        """The server serves from now on: its idle time counts from here, not from the start of
        the process (a start slowed by an extension or a loaded machine is nobody's idle time).
        Activity recorded already stands."""
        if self.last_record is None:
            self.last_activity = max(self.last_activity, self.clock())
            self.generation += 1

    def listen(self, listener: Callable[[float, float], None]) -> None:
        """Call ``listener(now, last activity before it)`` on every activity of the server."""
        self._listeners.append(listener)

    def _server_activity(self, now: float, record: Record) -> None:
        before = self.last_activity
        for listener in self._listeners:
            listener(now, before)
        self.last_activity = max(self.last_activity, now)
        self.last_record = record
        self.generation += 1

    def touch(self, kind: str, id: str, name: str | None = None, detail: str | None = None) -> None:
        """Record activity of a source now (``detail``: what it did, for people)."""
        now = self.clock()
        record = self._record(kind, id, name)
        record.last_activity = now
        if detail is not None:
            record.detail = detail
        self._server_activity(now, record)

    def touch_document(self, path: str, action: str) -> None:
        """A document was written ("saved", "renamed", ...); only the latest ones are listed."""
        if self.saving_for_stop:
            return
        self.touch("document", path, path, action)
        documents = self.of_kind("document")
        if len(documents) > MAX_DOCUMENTS:
            oldest = min(documents, key=lambda r: r.last_activity)
            self.records.pop((oldest.kind, oldest.id), None)

    def set_busy(self, kind: str, id: str, busy: bool, name: str | None = None) -> None:
        """Mark the start or the end of a source's busy period; both ends are activity."""
        record = self._record(kind, id, name)
        now = self.clock()
        if busy and record.busy_since is None:
            record.busy_since = now
        elif not busy and record.busy_since is not None:
            record.busy_since = None
            record.idle_since = now
            if self.stop_when_done is not None:
                self.changed.set()  # what "stop when done" waits for may have ended
        record.last_activity = now
        self._server_activity(now, record)

    def set_computing(self, kind: str, id: str, command: str | None) -> None:
        """A kernel's or terminal's process (or one it started) works (``command``), or no
        longer does (None); both ends are activity."""
        record = self.records.get((kind, id))
        if record is None or (command is None) == (record.computing is None):
            if record is not None:
                record.computing = command
            return
        now = self.clock()
        record.computing = command
        record.computing_since = now if command is not None else None
        if command is None and self.stop_when_done is not None:
            self.changed.set()
        record.last_activity = now
        self._server_activity(now, record)

    def add(self, kind: str, id: str, name: str) -> Record:
        """Start following a source found between checks.

        Its idle clock starts now: a kernel or terminal is found within one check of its start
        (a kernel start also wakes the loop), and counting from its wall-clock timestamp instead
        could cull early after a wall-clock jump.
        """
        record = self._record(kind, id, name)
        record.name = name
        return record

    def remove(self, kind: str, id: str) -> None:
        """Forget a source; its activity still counts for the server's last activity."""
        if self.records.pop((kind, id), None) is not None:
            self.generation += 1

    def keep_alive(self, seconds: float) -> float:
        """Keep the server up for ``seconds`` from now (replacing any earlier keep-alive)."""
        self.keepalive_until = self.clock() + seconds
        self.generation += 1
        self.changed.set()
        return self.keepalive_until

    def cancel_keepalive(self) -> bool:
        """End the keep-alive; True when there was one in force."""
        active = self.keepalive_until is not None and self.keepalive_until > self.clock()
        self.keepalive_until = None
        self.generation += 1
        self.changed.set()
        return active

    def set_stop_when_done(self, on: bool) -> bool:
        """Stop the server once nothing works any more (or no longer); True when it changed."""
        changed = (self.stop_when_done is not None) != on
        if changed:
            self.stop_when_done = self.clock() if on else None
            self.generation += 1
            self.changed.set()
        return changed

    def set_scheduled(self, runs: tuple[ScheduledRun, ...]) -> None:
        """The scheduled runs ahead, soonest first."""
        if runs != self.scheduled:
            self.scheduled = runs
            self.generation += 1
            self.changed.set()

    def of_kind(self, kind: str) -> list[Record]:
        return [r for r in self.records.values() if r.kind == kind]

    # -- reading -----------------------------------------------------------------------------

    def to_wall(self, monotonic: float) -> float:
        """A monotonic time as a POSIX timestamp on today's wall clock."""
        return self.wall_clock() - (self.clock() - monotonic)

    def isoformat(self, monotonic: float) -> str:
        """A monotonic time as UTC ISO 8601 with ``Z``."""
        stamp = datetime.fromtimestamp(self.to_wall(monotonic), tz=timezone.utc)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def snapshot(
    tracker: ActivityTracker,
    kernels: tuple[KernelState, ...],
    terminals: tuple[TerminalState, ...],
) -> Snapshot:
    """Everything the policy needs, read now."""
    sources = tuple(
        SourceState(r.kind, r.id, r.name, r.last_activity, r.busy_since, r.detail)
        for r in tracker.records.values()
        if r.kind not in ("kernel", "terminal")
    )
    last = tracker.last_record
    return Snapshot(
        now=tracker.clock(),
        started=tracker.started,
        last_activity=tracker.last_activity,
        kernels=kernels,
        terminals=terminals,
        sources=sources,
        keepalive_until=tracker.keepalive_until,
        stop_when_done=tracker.stop_when_done,
        scheduled=tracker.scheduled,
        last_source=last.describe() if last is not None else None,
        last_kind=last.kind if last is not None else None,
    )
