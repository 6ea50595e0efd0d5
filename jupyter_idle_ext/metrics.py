"""Prometheus metrics, served on the server's own /metrics with jupyter_server's.

The server's own figures carry the JupyterHub user and server name as labels (``user`` and
``server``, from ``$JUPYTERHUB_USER`` and ``$JUPYTERHUB_SERVER_NAME``; empty outside a Hub), so a
hub-wide Prometheus can answer "which servers have been idle longest" and "server-hours kept by
each kind of work" without joining on its scrape targets.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from typing import Callable

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric

SERVER_LABELS = ["user", "server"]

IDLE_SECONDS = Gauge(
    "jupyter_idle_ext_idle_seconds",
    "Seconds since the server's last execution activity (0 while a kernel works).",
    SERVER_LABELS,
)
SECONDS_TO_SHUTDOWN = Gauge(
    "jupyter_idle_ext_seconds_to_shutdown",
    "Seconds until the server shuts itself down (-1 when no rule will shut it down).",
    SERVER_LABELS,
)
SERVER_STOPS = Counter(
    "jupyter_idle_ext_server_stops",
    "Shutdowns of the server begun by the extension, by the rule that fired.",
    ["rule", *SERVER_LABELS],
)
KERNELS_CULLED = Counter(
    "jupyter_idle_ext_kernels_culled",
    "Kernels culled or removed, by the rule that fired.",
    ["reason"],
)
TERMINALS_CULLED = Counter(
    "jupyter_idle_ext_terminals_culled",
    "Terminals culled, by the rule that fired.",
    ["reason"],
)
HUB_REPORTS = Counter(
    "jupyter_idle_ext_hub_reports",
    "Activity posts to JupyterHub, by result (ok, error).",
    ["result"],
)
KEEPALIVES = Counter(
    "jupyter_idle_ext_keepalives",
    "Keep-alive requests, by result (granted, cancelled, refused).",
    ["result"],
)
ACTIVITY = Counter(
    "jupyter_idle_ext_activity",
    "Activity recorded from sources other than kernels and terminals, by source (document, "
    "collaboration, app).",
    ["source"],
)
KEPT_HELP = (
    "Seconds the server was up, by what kept it: kernel (a kernel busy or computing), process "
    "(a process this server started working), job (a notebook job's kernel busy), extension "
    "(another extension's work), keepalive (a keep-alive in force), idle (nothing working: the "
    "server waits out server_idle_timeout after its last activity, whose kind is `after`: "
    "document, app, collaboration, kernel, terminal, ..., or none)."
)


def server_labels(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The JupyterHub user and server name of this server ("" outside a Hub)."""
    return environ.get("JUPYTERHUB_USER", ""), environ.get("JUPYTERHUB_SERVER_NAME", "")


class Usage:
    """Seconds by what kept the server, counted up to each scrape: the interval since the last
    count goes to what kept the server at its start, then what keeps it now is read again."""

    def __init__(
        self,
        kept_by: Callable[[], tuple[str, str]],
        labels: tuple[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kept_by = kept_by
        self.labels = labels
        self.clock = clock
        # (kept_by, after) -> seconds
        self.totals: dict[tuple[str, str], float] = {}
        self.since = clock()
        self.current = ("idle", "none")

    def count(self) -> dict[tuple[str, str], float]:
        now = self.clock()
        self.totals[self.current] = self.totals.get(self.current, 0.0) + max(0.0, now - self.since)
        self.since = now
        # a scrape never fails for it: the last reading holds until the next
        with contextlib.suppress(Exception):
            self.current = self.kept_by()
        return dict(self.totals)

    def families(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "jupyter_idle_ext_kept_seconds",
            KEPT_HELP,
            labels=["kept_by", "after", *SERVER_LABELS],
        )
        for (kept_by, after), seconds in sorted(self.count().items()):
            family.add_metric([kept_by, after, *self.labels], seconds)
        yield family


class _UsageCollector:
    """Registered once per process; collects the running server's ``Usage``, if any."""

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def attach(self, usage: Usage) -> Callable[[], None]:
        """Collect ``usage`` from now on; return what stops that (which leaves a later server's
        usage in place, where tests start one after another in a process)."""
        self.usage = usage

        def detach() -> None:
            if self.usage is usage:
                self.usage = None

        return detach

    def collect(self) -> Iterator[Metric]:
        usage = self.usage
        if usage is not None:
            yield from usage.families()

    def describe(self) -> list[Metric]:
        return []


USAGE = _UsageCollector()
REGISTRY.register(USAGE)
