"""The sources of activity, one module each, and the one protocol the rest of the package knows
them by.

| module | what counts |
|---|---|
| kernels.py | this server's kernels: execution, busy periods, output, typing that reaches them |
| terminals.py | a terminal's input and output, at the pty |
| documents.py | document writes (saves, uploads, renames, copies, deletes) |
| collaboration.py | edits in a jupyter-collaboration room |
| proxy.py | input from the person to apps behind jupyter-server-proxy |
| gateway.py | kernels on a gateway (part of the kernels source: what the server relays) |
| jobs.py | kernels that this server's processes start (notebook jobs), while busy |
| processes.py | CPU (gpus.py: GPU) work of processes this server started |
| api.py | what another extension reports through the public API |

A source starts following when its factory makes it, records into the ``ActivityTracker`` by
itself, and is known to the check loop and the app only as a ``Source``: what it counts (for the
start-up line), the processes it owns (so the process source can tell a kernel's work from a
job's), ``refresh`` before a check, ``recheck`` right before something is stopped, and ``stop``.
Adding one: a module with its factory, one line in ``FACTORIES``, and its tests (see
docs/development.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from ..activity import ActivityTracker
from ..compat import Capabilities

Owners = dict[int, tuple[str, str]]


@runtime_checkable
class Source(Protocol):
    """One source of activity, as the rest of the package sees it."""

    # its name in the registry and in metrics ("kernels", "documents", ...)
    name: str

    def explain(self) -> str:
        """What it counts as activity, in a few words, for the start-up INFO line."""

    def owns(self) -> Owners:
        """The processes it runs, by pid: (kind, id) of the kernel, terminal or app."""

    async def refresh(self, every: bool) -> None:
        """Bring what it knows up to date before a check (``every``: not only what is due)."""

    async def recheck(self) -> None:
        """Look again right now: something is about to be culled or the server stopped."""

    async def stop(self) -> None:
        """Undo everything it started; never raises for a part already gone."""


class BaseSource:
    """Defaults for the parts of the protocol a source does not need."""

    name = "source"

    def explain(self) -> str:
        return self.name

    def owns(self) -> Owners:
        return {}

    async def refresh(self, every: bool) -> None:
        return None

    async def recheck(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclass
class Context:
    """What a factory may use to make its source."""

    options: Any
    serverapp: Any
    tracker: ActivityTracker
    capabilities: Capabilities
    log: Any
    # this server's mark in the environment of every process it starts, or None (processes off)
    marker: str | None
    # () -> ids of the kernels and terminals being stopped right now (their processes wind down)
    stopping: Callable[[], set[str]]
    # the sources made so far, by name: a later factory may read an earlier source
    made: dict[str, Source] = field(default_factory=dict)

    def owners(self) -> Owners:
        """Every process a source made so far runs."""
        found: Owners = {}
        for source in list(self.made.values()):
            found.update(source.owns())
        return found


Factory = Callable[[Context], Optional[Source]]


def _factories() -> list[Factory]:
    # imported here: each module imports this one for the protocol
    from . import api, collaboration, documents, jobs, kernels, processes, proxy, terminals

    # the order they start and are listed in; processes last, it asks the others what they own
    return [
        kernels.make,
        terminals.make,
        documents.make,
        collaboration.make,
        proxy.make,
        api.make,
        jobs.make,
        processes.make,
    ]


@dataclass
class Sources:
    """The running sources, in the order they were made."""

    all: list[Source] = field(default_factory=list)

    def __iter__(self) -> Iterator[Source]:
        return iter(self.all)

    def get(self, name: str) -> Source | None:
        return next((s for s in self.all if s.name == name), None)

    async def stop(self, log: Any) -> None:
        """Stop each, the last made first; one that fails does not keep the others running."""
        for source in reversed(self.all):
            try:
                await source.stop()
            except Exception:
                log.exception("Error while stopping the %s source", source.name)
        self.all = []


def start_sources(context: Context, factories: list[Factory] | None = None) -> Sources:
    """Make every source that applies here, and say in one INFO line what counts as activity."""
    sources = Sources()
    for factory in factories if factories is not None else _factories():
        source = factory(context)
        if source is None:
            continue
        assert isinstance(source, Source), f"{factory} made no Source"
        context.made[source.name] = source
        sources.all.append(source)
    context.log.info("Counting as activity: %s.", "; ".join(s.explain() for s in sources))
    return sources
