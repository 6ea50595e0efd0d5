"""The status document: what the server, each kernel and terminal are doing and what will happen.

Built from the snapshot and the plan of the check loop's latest check, which saw everything
recorded before the request (the loop is woken for it when something happened since): the
document shows the loop's own decisions, with durations counted to the moment it is read. Reading
it decides nothing and changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from .activity import ActivityTracker
from .hub import HubReporter
from .policy import Plan, PolicyConfig, Snapshot, describe_source

# SageMaker's /api/idle format, which platforms that poll it parse
SAGEMAKER_FORMAT = "%Y-%m-%dT%H:%M:%S.%fz"


def _round(seconds: float) -> float:
    return round(max(0.0, seconds), 1)


def build_status(
    *,
    tracker: ActivityTracker,
    snapshot: Snapshot,
    plan: Plan,
    now: float,
    config: PolicyConfig,
    reporter: HubReporter | None,
    hub_note: str,
    keepalive_cap: float,
    lost: dict[str, str] | None = None,
    recent: list[dict[str, Any]] | None = None,
    ceilings: dict[str, float] | None = None,
    unsaved: dict[str, Any] | None = None,
) -> dict[str, Any]:
    def iso(monotonic: float | None) -> str | None:
        return None if monotonic is None else tracker.isoformat(monotonic)

    # working at the check: the last activity is now; otherwise the check's own figure
    active = now if plan.reported_activity >= snapshot.now else plan.reported_activity
    server = plan.server
    warning = None
    if server.action == "warn":
        warning = {
            "shutdown_at": iso(server.deadline),
            "rule": server.rule,
            "reason": server.reason_at(now),
            "why": server.why.as_json(now),
        }
    keepalive = None
    if snapshot.keepalive_until is not None and snapshot.keepalive_until > now:
        keepalive = {
            "until": iso(snapshot.keepalive_until),
            "seconds_left": _round(snapshot.keepalive_until - now),
        }
    kept_by = None
    since = server.since("busy")
    if server.kept_by and since is not None:
        kept_by = {"what": server.kept_by, "busy_seconds": _round(now - since)}
    kernels = []
    for state, decision in zip(snapshot.kernels, plan.kernels):
        if not state.alive:
            execution_state = "dead"
        else:
            execution_state = "busy" if state.busy_since is not None else "idle"
        kernels.append(
            {
                "id": state.id,
                "name": state.name,
                "execution_state": execution_state,
                "last_activity": iso(state.last_activity),
                "idle_seconds": _round(now - state.last_activity),
                "busy_seconds": None
                if state.busy_since is None
                else _round(now - state.busy_since),
                "connections": state.connections,
                # the gateway it runs on, or null for a kernel of this server
                "remote": state.remote or None,
                "action": decision.action,
                "reason": decision.reason_at(now),
                # the same as data, which the page renders with its durations moving on
                "why": decision.why.as_json(now),
                "cull_at": iso(decision.deadline) if decision.action == "keep" else None,
            }
        )
    terminals = [
        {
            "name": state.name,
            "last_activity": iso(state.last_activity),
            "idle_seconds": _round(now - state.last_activity),
            "action": decision.action,
            "reason": decision.reason_at(now),
            "why": decision.why.as_json(now),
            "cull_at": iso(decision.deadline) if decision.action == "keep" else None,
        }
        for state, decision in zip(snapshot.terminals, plan.terminals)
    ]
    sources = [
        {
            "kind": source.kind,
            "name": source.name,
            "detail": source.detail,
            "last_activity": iso(source.last_activity),
            "idle_seconds": _round(now - source.last_activity),
            "busy_seconds": None if source.busy_since is None else _round(now - source.busy_since),
            "reason": why.text(now),
            "why": why.as_json(now),
        }
        for source in sorted(snapshot.sources, key=lambda s: -s.last_activity)
        for why in (describe_source(source),)
    ]
    hub: dict[str, Any] = {"enabled": reporter is not None, "note": hub_note}
    if reporter is not None:
        hub.update(
            {
                "interval": reporter.interval,
                "server_name": reporter.hub.server_name,
                "last_report": reporter.last_report,
                "last_error": reporter.last_error,
                "posts": reporter.posts,
                "failures": reporter.failures,
            }
        )
    wall_active = datetime.fromtimestamp(tracker.to_wall(active), tz=timezone.utc)
    return {
        "now": iso(now),
        "started": iso(snapshot.started),
        "last_activity": iso(active),
        "lastActiveTimestamp": wall_active.strftime(SAGEMAKER_FORMAT),
        "idle_seconds": _round(now - active),
        "server": {
            "action": server.action,
            "rule": server.rule or None,
            "reason": server.reason_at(now),
            "why": server.why.as_json(now),
            "shutdown_at": iso(server.deadline),
            "seconds_to_shutdown": None
            if server.deadline is None
            else _round(server.deadline - now),
            "warning": warning,
            # what works and keeps the server (the policy's own pick), or None
            "kept_by": kept_by,
            # the scheduled runs ahead, and whether the planned shutdown cancels each
            "scheduled": [
                {
                    "name": run.name,
                    "at": run.at,
                    "cancelled": server.deadline is not None and run.due > server.deadline,
                }
                for run in snapshot.scheduled
            ],
            # the same in words: "`nightly` at 2026-12-06T02:00:00.000Z will not run"
            "cancels": server.cancels or None,
        },
        "keepalive": keepalive,
        "keepalive_cap_seconds": keepalive_cap,
        "stop_when_done": None
        if snapshot.stop_when_done is None
        else {
            "since": iso(snapshot.stop_when_done),
            # what it waits for, or None when nothing works and the shutdown is planned
            "waiting_for": None if server.rule == "stop_when_done" else server.reason_at(now),
        },
        # the latest actions, newest first (a kernel culled, a warning, a keep-alive)
        "recent": recent or [],
        "kernels": kernels,
        "terminals": terminals,
        "sources": sources,
        "hub": hub,
        "policy": asdict(config),
        # the admin's ceilings in force (from the server's environment), by option
        "ceilings": ceilings or {},
        # what cannot be seen in this server, and what follows from it
        "capabilities_lost": lost or {},
        # the documents open pages hold unsaved (saved before an idle stop), whether the stop
        # is saving them now, and what it saved where
        "unsaved": unsaved or {"documents": [], "note": "", "saving": False, "saved": []},
    }
