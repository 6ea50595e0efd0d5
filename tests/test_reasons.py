"""One reason type, rendered the same everywhere (jupyter_idle_ext/reasons.py).

The policy's decisions carry their reasons as data; the log, the status and events render them
here, and the page renders the status's ``why`` in frontend/src/format.ts. The cases below are
decisions the policy makes, covering every text in reasons.json. Their ``why`` and text are
written to frontend/test/reasons.cases.json, which the page's unit tests (``jlpm test``) render
with its own code: both must give the same text. After a change of the texts or the policy,
write the file again with ``python tests/test_reasons.py``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from jupyter_idle_ext.options import IdleOptions
from jupyter_idle_ext.policy import (
    Decision,
    KernelState,
    PolicyConfig,
    ScheduledRun,
    Snapshot,
    SourceState,
    TerminalState,
    decide,
    decide_kernel,
    decide_terminal,
    describe_source,
)
from jupyter_idle_ext.reasons import PHRASES, Clause, Reason, render, seconds

CASES = Path(__file__).resolve().parent.parent / "frontend" / "test" / "reasons.cases.json"
T0 = 1000.0


def config(**options: Any) -> PolicyConfig:
    base: dict[str, Any] = {"server_idle_timeout": 600.0, "shutdown_warning": 60.0}
    return IdleOptions.default_policy(**{**base, **options})


def kernel(**state: Any) -> KernelState:
    return KernelState(**{"id": "3f2a5b1c", "name": "python3", "last_activity": T0, **state})


def server(now: float, options: dict[str, Any] | None = None, **fields: Any) -> Decision:
    snap = Snapshot(now=T0 + now, started=T0, last_activity=T0, **fields)
    return decide(snap, config(**(options or {}))).server


def decisions() -> list[tuple[str, Decision]]:
    """A decision of every kind the policy makes, named."""
    c = config()
    run = ScheduledRun("nightly-report", T0 + 900, "2026-12-06T02:00:00.000Z")
    process = SourceState("process", "81@1700000000.00", "python train.py", T0, T0 + 5, "50 % CPU")
    return [
        ("kernel idle", decide_kernel(kernel(), c, T0 + 1200)),
        ("kernel culled", decide_kernel(kernel(), c, T0 + 3600)),
        ("kernel dead", decide_kernel(kernel(dead_since=T0), c, T0 + 30)),
        ("kernel dead, removed soon", decide_kernel(kernel(dead_since=T0), c, T0 + 4)),
        ("kernel unobserved", decide_kernel(kernel(unobserved_since=T0), c, T0 + 20)),
        ("kernel never culled", decide_kernel(kernel(), config(cull_idle_timeout=0), T0 + 20)),
        (
            "kernel connections unknown",
            decide_kernel(kernel(connections=None), config(cull_connected=False), T0 + 20),
        ),
        (
            "kernel connected",
            decide_kernel(kernel(connections=2), config(cull_connected=False), T0 + 20),
        ),
        ("kernel busy", decide_kernel(kernel(busy_since=T0 + 3), c, T0 + 20)),
        (
            "kernel busy past its cap",
            decide_kernel(kernel(busy_since=T0), config(max_busy_time=1800), T0 + 3600),
        ),
        (
            "terminal running a program",
            decide_terminal(TerminalState("1", T0, T0 + 2, "make -j2"), c, T0 + 20),
        ),
        ("server idle", server(100, last_source="notes.md saved")),
        ("server shut down", server(600, last_source="kernel 3f2a5b1c")),
        ("server warned", server(560, scheduled=(run,))),
        ("server old", server(90, {"max_server_age": 90, "server_idle_timeout": 0})),
        ("server kept by a process", server(100, sources=(process,))),
        (
            # braces in a command line are said as they are; durations in fractions of seconds
            "server kept by a process with braces",
            server(
                100.25,
                sources=(replace(process, name="bash -c 'echo {left}'", busy_since=T0 + 5.46),),
            ),
        ),
        ("server keep-alive", server(100, keepalive_until=T0 + 2000)),
        ("server keep-alive ended", server(2000, keepalive_until=T0 + 2000)),
        (
            "server waiting for a run",
            server(100, {"scheduled_run_wait": 600}, scheduled=(run,)),
        ),
        (
            "server, the run did not start",
            server(1020, {"scheduled_run_wait": 600}, scheduled=(run,)),
        ),
        ("server stop when done", server(30, {"shutdown_warning": 0}, stop_when_done=T0 + 10)),
        ("server warned, stop when done", server(30, stop_when_done=T0 + 10)),
        ("server stopped when done", server(75, {"shutdown_warning": 0}, stop_when_done=T0)),
        (
            "server busy, stops when done",
            server(20, kernels=(kernel(busy_since=T0 + 1),), stop_when_done=T0 + 10),
        ),
        ("server without an idle rule", server(20, {"server_idle_timeout": 0})),
        (
            "server busy, with an age limit",
            server(20, {"max_server_age": 3600}, kernels=(kernel(busy_since=T0 + 1),)),
        ),
    ]


def sources() -> list[tuple[str, SourceState]]:
    """What each kind of source did, as the status's list of other activity says it."""
    return [
        ("a document saved", SourceState("document", "notes.md", "notes.md", T0, None, "saved")),
        ("an app's input", SourceState("app", "rstudio", "rstudio", T0, None, "input")),
        ("another extension's source", SourceState("api", "etl", "etl", T0)),
        ("a source busy", SourceState("api", "etl", "etl", T0, T0 + 2)),
        (
            "a process working",
            SourceState("process", "81@1.00", "python train.py", T0, T0 + 3, "50 % CPU"),
        ),
        (
            "a process that stopped working",
            SourceState("process", "81@1.00", "python train.py", T0, None, "0 % CPU"),
        ),
    ]


def build_cases() -> list[dict[str, Any]]:
    cases = []
    reasons = [(name, d.why, d.now) for name, d in decisions()]
    reasons += [(name, describe_source(source), T0 + 30) for name, source in sources()]
    for name, reason, now in reasons:
        why = reason.as_json(now)
        for elapsed in (0, 42):
            cases.append(
                {"name": name, "why": why, "elapsed": elapsed, "text": render(why, elapsed)}
            )
    return cases


def test_the_pages_cases_are_the_policys_own() -> None:
    """The page's fixture is what the policy decides now (else: python tests/test_reasons.py)."""
    assert json.loads(CASES.read_text()) == build_cases()


def test_the_cases_say_every_text() -> None:
    said = {c["says"] for case in build_cases() for c in case["why"]["clauses"]}
    assert said == set(PHRASES), set(PHRASES) ^ said


@pytest.mark.parametrize(("name", "decision"), decisions(), ids=[n for n, _ in decisions()])
def test_a_reason_read_later_counts_its_durations_to_then(name: str, decision: Decision) -> None:
    """What the log says at a moment is what the status's why says, rendered for that moment."""
    for later in (0.0, 42.0):
        why = decision.why.as_json(decision.now + later)
        assert render(why) == decision.reason_at(decision.now + later)
        assert render(decision.why.as_json(decision.now), later) == render(why)
    # every field filled (a command line may hold braces of its own)
    assert "{" not in decision.reason.replace("{left}'", ""), decision.reason


def test_texts_are_rendered_from_the_clauses() -> None:
    why = Reason(
        (Clause("busy_over", subject="busy", limit=1800), Clause("idle_over", rule="x", limit=60)),
        (("idle", 10.0), ("busy", 0.0)),
    )
    assert why.text(100.0) == "busy 100 s >= max_busy_time 1800 s; idle 90 s >= x 60 s"
    # a name with braces is said as it is
    odd = Reason((Clause("busy_for", subject="process 1 `echo {left}`"),), (("busy", 0.0),))
    assert odd.text(5.0) == "process 1 `echo {left}` for 5 s"
    # half a second rounds up, as Math.round does on the page
    assert (seconds(2.5), seconds(3.5), seconds(-1)) == ("3 s", "4 s", "0 s")


def test_sources_say_what_they_did() -> None:
    said = {name: describe_source(source).text(T0 + 30) for name, source in sources()}
    assert said == {
        "a document saved": "notes.md saved 30 s ago",
        "an app's input": "rstudio: input 30 s ago",
        "another extension's source": "etl: active 30 s ago",
        "a source busy": "etl busy for 28 s",
        "a process working": "process 81 `python train.py` at 50 % CPU for 27 s",
        "a process that stopped working": (
            "process 81 `python train.py` stopped working 30 s ago (now 0 % CPU)"
        ),
    }


def test_a_rule_that_stops_the_server_is_not_what_keeps_it() -> None:
    """kept_by names what works while it keeps the server; at max_server_age's warning and
    stop it keeps nothing any more."""
    busy = (kernel(busy_since=T0 + 1),)
    options = {"max_server_age": 100, "shutdown_warning": 30}
    assert server(50, options, kernels=busy).kept_by == "kernel busy"
    assert server(80, options, kernels=busy).action == "warn"
    assert server(80, options, kernels=busy).kept_by == ""
    assert server(100, options, kernels=busy).action == "shutdown"
    assert server(100, options, kernels=busy).kept_by == ""


def test_a_field_a_clause_lacks_says_nothing() -> None:
    assert Reason((Clause("running_for"),), (("busy", 0.0),)).text(4.0) == "running  for 4 s"


def test_an_unknown_clause_is_refused() -> None:
    with pytest.raises(ValueError, match="no text for a reason clause 'idle_ish'"):
        Clause("idle_ish")


if __name__ == "__main__":
    CASES.write_text(json.dumps(build_cases(), indent=1) + "\n")
    print(f"wrote {CASES}", file=sys.stderr)
