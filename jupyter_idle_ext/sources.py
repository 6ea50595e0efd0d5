"""Which activity sources run in this server, besides kernels and terminals: document writes
always; collaborative edits, proxied apps and processes where they exist and are on.

Each source records into the tracker by itself; this module starts them and says, in one INFO
line, what counts as activity here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .activity import ActivityTracker, KernelWatcher, TerminalWatcher
from .collaboration import collaboration_watcher
from .documents import DocumentWatcher
from .processes import ProcessWatcher, load_nvml
from .proxy import ProxyWatcher, proxy_watcher


@dataclass
class Sources:
    """The running sources; ``close()`` each at stop (the proxy's apps are stopped first)."""

    all: list[Any] = field(default_factory=list)
    proxy: ProxyWatcher | None = None
    processes: ProcessWatcher | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def start_sources(
    *,
    options: Any,
    serverapp: Any,
    tracker: ActivityTracker,
    kernels: KernelWatcher,
    terminals: TerminalWatcher | None,
    marker: str | None,
    log: Any,
) -> Sources:
    sources = Sources()
    counted = ["kernels", "terminals" if terminals is not None else "no terminals"]
    sources.all.append(DocumentWatcher(serverapp.contents_manager, tracker))
    counted.append("document writes")
    collaboration = collaboration_watcher(serverapp.web_app, tracker)
    if collaboration is not None:
        sources.all.append(collaboration)
        counted.append("collaborative edits")
    proxy = proxy_watcher(serverapp.web_app, tracker, options.proxy_keepalive_patterns, log)
    if proxy is not None:
        sources.all.append(proxy)
        sources.proxy = proxy
        apps = ", ".join(proxy.apps()) or "ports"
        with_keepalives = ", ".join(sorted(proxy.keepalives)) or "none"
        counted.append(
            f"input to apps behind jupyter-server-proxy ({apps}; client keep-alives ignored "
            f"for {with_keepalives})"
        )
    if marker is not None:

        def owners() -> dict[int, tuple[str, str]]:
            apps = proxy.pids() if proxy is not None else {}
            return {**apps, **kernels.pids(), **(terminals.pids() if terminals else {})}

        gpu = options.gpu_utilization_threshold
        processes = ProcessWatcher(
            tracker=tracker,
            marker=marker,
            interval=options.process_check_interval,
            cpu_threshold=options.process_cpu_threshold,
            gpu_threshold=gpu,
            owners=owners,
            log=log,
            nvml=load_nvml() if gpu > 0 else None,
        )
        sources.all.append(processes)
        sources.processes = processes
        sources.tasks.append(asyncio.create_task(processes.run()))
        use = []
        if options.process_cpu_threshold > 0:
            use.append(f"CPU >= {options.process_cpu_threshold:g} % of a core")
        if processes.gpus is not None and processes.gpus.handles:
            use.append(f"GPU >= {gpu:g} %")
        counted.append(
            f"work of this server's processes ({', '.join(use) or 'no measure on'}, checked "
            f"every {options.process_check_interval:g} s)"
        )
    log.info("Counting as activity: %s.", "; ".join(counted))
    return sources
