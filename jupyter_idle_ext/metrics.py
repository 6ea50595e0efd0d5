"""Prometheus metrics, served on the server's own /metrics with jupyter_server's."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

IDLE_SECONDS = Gauge(
    "jupyter_idle_ext_idle_seconds",
    "Seconds since the server's last execution activity (0 while a kernel works).",
)
SECONDS_TO_SHUTDOWN = Gauge(
    "jupyter_idle_ext_seconds_to_shutdown",
    "Seconds until the server shuts itself down (-1 when no rule will shut it down).",
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
