"""The idle rules, table by table: kernels, terminals, the server and when to look again.

Pure functions on made-up snapshots: no server, no kernel, no clock, no sleep. In the tables every
time is in seconds after T0, an arbitrary origin on the monotonic clock; the helpers add T0.
"""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_idle_ext.options import IdleOptions
from jupyter_idle_ext.policy import (
    KernelState,
    Plan,
    PolicyConfig,
    Snapshot,
    SourceState,
    TerminalState,
    decide,
    decide_kernel,
    decide_terminal,
    horizon,
    reported_activity,
    working,
)

# not 0, so that a deadline at the origin cannot pass for "no deadline"
T0 = 1000.0
NEVER = 10**7

# the rule names a decision reports
IDLE = "cull_idle_timeout"
SPEC = "kernelspec cull_idle_timeout"
CAP = "max_busy_time"
TERM = "terminal_idle_timeout"
SERVER_IDLE = "server_idle_timeout"
AGE = "max_server_age"
# a keep-alive that pushes the idle deadline decides it, and is named
KEEPALIVE = "keepalive"


def at(offset: float | None) -> float | None:
    return None if offset is None else T0 + offset


def config(**options: Any) -> PolicyConfig:
    """Kernels culled after 100 s, every server rule off, unless a row says otherwise."""
    base: dict[str, Any] = {
        "cull_idle_timeout": 100.0,
        "cull_interval": 300.0,
        "server_idle_timeout": 0.0,
        "max_server_age": 0.0,
        "shutdown_warning": 0.0,
    }
    return IdleOptions.default_policy(**{**base, **options})


def kernel(
    id: str = "k1",
    last: float = 0,
    busy: float | None = None,
    dead: float | None = None,
    computing: float | None = None,
    **state: Any,
) -> KernelState:
    return KernelState(
        id=id,
        name="python3",
        last_activity=T0 + last,
        busy_since=at(busy),
        dead_since=at(dead),
        computing_since=at(computing),
        computing=None if computing is None else "python -m ipykernel_launcher",
        **state,
    )


def snapshot(
    now: float, last: float = 0, keepalive: float | None = None, **fields: Any
) -> Snapshot:
    return Snapshot(
        now=T0 + now,
        started=T0,
        last_activity=T0 + last,
        keepalive_until=at(keepalive),
        **fields,
    )


def case(name: str, *values: Any) -> Any:
    """One row of a table, named by its test id."""
    return pytest.param(*values, id=name)


def assert_reason(reason: str, words: tuple[str, ...]) -> None:
    for word in words:
        assert word in reason, f"{word!r} not in reason {reason!r}"


# -- kernels ---------------------------------------------------------------------------------

# fmt: off
KERNELS = [
    # name, options, kernel state, now, action, deadline, rule, reason contains
    case("idle-below-timeout-kept", {}, {}, 99, "keep", 100, "",
         ("idle 99 s", "of cull_idle_timeout 100 s")),
    case("idle-exactly-at-timeout-culled", {}, {}, 100, "cull", 100, IDLE,
         ("idle 100 s >= cull_idle_timeout 100 s",)),
    case("idle-above-timeout-culled", {}, {}, 5000, "cull", 100, IDLE,
         ("idle 5000 s >= cull_idle_timeout 100 s",)),
    case("timeout-0-never-culled", {"cull_idle_timeout": 0}, {}, NEVER, "keep", None, "",
         ("cull_idle_timeout is 0", "never")),
    case("kernelspec-smaller-before", {"cull_idle_timeout": 3600}, {"timeout_override": 60},
         59, "keep", 60, "", ("kernelspec cull_idle_timeout 60 s",)),
    case("kernelspec-smaller-culls-first", {"cull_idle_timeout": 3600}, {"timeout_override": 60},
         60, "cull", 60, SPEC, ("idle 60 s >= kernelspec cull_idle_timeout 60 s",)),
    case("kernelspec-larger-outlives-global", {}, {"timeout_override": 7200},
         100, "keep", 7200, "", ("kernelspec cull_idle_timeout 7200 s",)),
    case("kernelspec-larger-reached", {}, {"timeout_override": 7200},
         7200, "cull", 7200, SPEC, (">= kernelspec cull_idle_timeout 7200 s",)),
    case("kernelspec-0-never-despite-global", {}, {"timeout_override": 0},
         NEVER, "keep", None, "", ("kernelspec cull_idle_timeout is 0", "never")),
    case("kernelspec-culls-while-global-0", {"cull_idle_timeout": 0}, {"timeout_override": 60},
         60, "cull", 60, SPEC, (">= kernelspec cull_idle_timeout 60 s",)),
    case("connected-culled-by-default", {"cull_connected": True}, {"connections": 2},
         100, "cull", 100, IDLE, (">= cull_idle_timeout",)),
    case("connected-kept-if-cull_connected-off", {"cull_connected": False}, {"connections": 2},
         NEVER, "keep", None, "", ("2 connection(s)", "cull_connected is off")),
    case("unknown-connections-count-as-connected", {"cull_connected": False},
         {"connections": None}, NEVER, "keep", None, "", ("connections unknown",)),
    case("unknown-connections-culled-if-cull_connected", {"cull_connected": True},
         {"connections": None}, 100, "cull", 100, IDLE, (">= cull_idle_timeout",)),
    case("unconnected-culled-if-cull_connected-off", {"cull_connected": False}, {},
         100, "cull", 100, IDLE, (">= cull_idle_timeout",)),
    case("busy-kept-no-deadline-without-cap", {}, {"busy": 0},
         NEVER, "keep", None, "", (f"busy for {NEVER} s",)),
    case("cull_busy-busy-before-timeout", {"cull_busy": True}, {"busy": 0},
         99, "keep", 100, "", ("of cull_idle_timeout",)),
    case("cull_busy-busy-culled-by-idle-time", {"cull_busy": True}, {"busy": 0},
         100, "cull", 100, IDLE, ("idle 100 s >= cull_idle_timeout 100 s",)),
    case("cull_busy-ignores-cap", {"cull_busy": True, "max_busy_time": 500}, {"busy": 0},
         100, "cull", 100, IDLE, (">= cull_idle_timeout",)),
    case("busy-before-cap-kept-until-cap", {"max_busy_time": 500}, {"busy": 0},
         499, "keep", 500, "", ("busy for 499 s",)),
    case("silent-busy-at-cap-culled", {"max_busy_time": 500}, {"busy": 0},
         500, "cull", 500, CAP, ("busy 500 s >= max_busy_time 500 s", "cull_idle_timeout 100 s")),
    case("silent-busy-past-cap-culled", {"max_busy_time": 500}, {"busy": 0},
         9000, "cull", 500, CAP, (">= max_busy_time 500 s",)),
    case("busy-past-cap-recent-output-kept", {"max_busy_time": 500}, {"busy": 0, "last": 450},
         500, "keep", 550, "", (">= max_busy_time 500 s", "idle 50 s")),
    case("busy-past-cap-recent-output-last-second", {"max_busy_time": 500},
         {"busy": 0, "last": 450}, 549, "keep", 550, "", ("max_busy_time",)),
    case("busy-past-cap-culled-at-last-activity-plus-timeout", {"max_busy_time": 500},
         {"busy": 0, "last": 450}, 550, "cull", 550, CAP,
         (">= max_busy_time 500 s", "idle 100 s >= cull_idle_timeout 100 s")),
    # its process (a thread, or a process it started) computes while it reports idle
    case("computing-kept-no-deadline-without-cap", {}, {"computing": 0}, NEVER, "keep", None,
         "", ("computing (python -m ipykernel_launcher) for",)),
    case("computing-kept-until-cap", {"max_busy_time": 500}, {"computing": 0}, 499, "keep",
         500, "", ("computing",)),
    case("computing-past-cap-culled", {"max_busy_time": 500}, {"computing": 0}, 500, "cull",
         500, CAP, ("computing (python -m ipykernel_launcher) 500 s >= max_busy_time 500 s",)),
    case("executing-named-before-computing", {}, {"busy": 0, "computing": 10}, NEVER, "keep",
         None, "", ("busy for",)),
    # a dead kernel stays listed DEAD_KERNEL_GRACE (10 s) for clients to read why it failed
    case("dead-kept-listed-during-grace", {}, {"dead": 1}, 5, "keep", 11, "",
         ("kernel process is dead", "removed in 6 s")),
    case("dead-removed-after-grace", {}, {"dead": 1}, 11, "remove", 11, "dead", ("dead",)),
    case("dead-removed-even-if-busy-and-never-culled", {"cull_idle_timeout": 0},
         {"dead": 1, "busy": 0}, 11, "remove", 11, "dead", ("dead",)),
]
# fmt: on


@pytest.mark.parametrize(
    ("options", "state", "now", "action", "deadline", "rule", "words"), KERNELS
)
def test_kernel(
    options: dict[str, Any],
    state: dict[str, Any],
    now: float,
    action: str,
    deadline: float | None,
    rule: str,
    words: tuple[str, ...],
) -> None:
    c = config(**options)
    k = kernel(**state)
    d = decide_kernel(k, c, T0 + now)
    assert (d.kind, d.id, d.action) == ("kernel", "k1", action), d
    assert d.deadline == at(deadline), d
    assert d.rule == rule, d
    assert_reason(d.reason, words)
    # decide(previous=...) reuses an earlier check's keep for the same state object until its
    # deadline: whenever that check was, the decision is this one
    for earlier in (0.0, now / 2, now - 1, now - 1e-6, now):
        before = snapshot(earlier, kernels=(k,))
        carried = decide(snapshot(now, kernels=(k,)), c, (before, decide(before, c))).kernels[0]
        assert (carried.action, carried.deadline, carried.rule) == (action, at(deadline), rule)
        assert carried.reason_at(T0 + now) == d.reason_at(T0 + now), earlier


def test_a_kernel_whose_state_changed_is_decided_afresh() -> None:
    c = config()
    idle = kernel(last=0)
    before = snapshot(10, kernels=(idle,))
    previous = (before, decide(before, c))
    # the same kernel, now dead: a new state object, although its id is the same
    dead = kernel(last=0, dead=10)
    plan = decide(snapshot(30, kernels=(dead,)), c, previous)
    assert (plan.kernels[0].action, plan.kernels[0].rule) == ("remove", "dead")


def test_kernel_idle_is_time_since_last_activity() -> None:
    assert decide_kernel(kernel(last=10), config(), T0 + 130).idle == 120
    # a record newer than "now" (taken just after the snapshot) never yields negative idle time
    assert decide_kernel(kernel(last=10), config(), T0 + 5).idle == 0


# -- terminals -------------------------------------------------------------------------------

# fmt: off
TERMINALS = [
    # name, options, now, action, deadline, rule, reason contains
    case("own-timeout-before", {"terminal_idle_timeout": 60, "cull_idle_timeout": 3600},
         59, "keep", 60, "", ("of terminal_idle_timeout 60 s",)),
    case("own-timeout-at-deadline-culled", {"terminal_idle_timeout": 60, "cull_idle_timeout": 3600},
         60, "cull", 60, TERM, ("idle 60 s >= terminal_idle_timeout 60 s",)),
    case("own-timeout-longer-than-kernels", {"terminal_idle_timeout": 7200},
         100, "keep", 7200, "", ("terminal_idle_timeout 7200 s",)),
    case("none-falls-back-before", {"terminal_idle_timeout": None},
         99, "keep", 100, "", ("of cull_idle_timeout 100 s",)),
    case("none-falls-back-to-cull_idle_timeout", {"terminal_idle_timeout": None},
         100, "cull", 100, IDLE, ("idle 100 s >= cull_idle_timeout 100 s",)),
    case("zero-disables-despite-kernel-timeout", {"terminal_idle_timeout": 0},
         NEVER, "keep", None, "", ("terminal_idle_timeout is 0", "never")),
    case("none-and-kernel-timeout-0-never", {"terminal_idle_timeout": None, "cull_idle_timeout": 0},
         NEVER, "keep", None, "", ("cull_idle_timeout is 0", "never")),
    case("own-timeout-while-kernels-never", {"terminal_idle_timeout": 60, "cull_idle_timeout": 0},
         60, "cull", 60, TERM, (">= terminal_idle_timeout 60 s",)),
]
# fmt: on


@pytest.mark.parametrize(("options", "now", "action", "deadline", "rule", "words"), TERMINALS)
def test_terminal(
    options: dict[str, Any],
    now: float,
    action: str,
    deadline: float | None,
    rule: str,
    words: tuple[str, ...],
) -> None:
    d = decide_terminal(TerminalState("1", T0), config(**options), T0 + now)
    assert (d.kind, d.id, d.action) == ("terminal", "1", action), d
    assert d.deadline == at(deadline), d
    assert d.rule == rule, d
    assert_reason(d.reason, words)


def test_a_terminal_whose_program_works_is_kept_until_the_cap() -> None:
    c = config(terminal_idle_timeout=60, max_busy_time=500)
    running = TerminalState("1", T0, computing_since=T0 + 10, computing="python train.py")
    d = decide_terminal(running, c, T0 + 300)
    assert (d.action, d.deadline) == ("keep", T0 + 510), d
    assert "running python train.py for 290 s" in d.reason
    d = decide_terminal(running, c, T0 + 510)
    assert (d.action, d.rule) == ("cull", TERM), d
    done = TerminalState("1", T0 + 300)  # its program ended at 300: idle from then
    assert decide_terminal(done, c, T0 + 359).action == "keep"
    assert decide_terminal(done, c, T0 + 360).action == "cull"


def test_a_kernel_that_cannot_be_followed_is_never_culled_and_keeps_the_server_to_the_cap() -> None:
    """Fail safe: unknown means working, never idle since the start."""
    c = config(server_idle_timeout=200, max_busy_time=500)
    unseen = kernel(last=0, unobserved_since=T0 + 10)
    for now in (150, 400, 5000):
        d = decide_kernel(unseen, c, T0 + now)
        assert (d.action, d.reason) == ("keep", "its activity cannot be seen: never culled"), d
    server = decide(snapshot(400, kernels=(unseen,)), c).server
    assert (server.action, server.kept_by) == ("keep", "kernel not observable"), server
    assert "whose activity cannot be seen for 390 s" in server.reason
    # past max_busy_time it keeps nothing, and the idle rule decides
    server = decide(snapshot(510, kernels=(unseen,)), c).server
    assert (server.action, server.rule) == ("shutdown", SERVER_IDLE), server
    assert decide_kernel(unseen, c, T0 + 510).action == "keep"


def test_a_scheduled_run_is_named_when_the_stop_cancels_it_and_waited_for_within_the_bound() -> (
    None
):
    from jupyter_idle_ext.policy import SCHEDULED_RUN_START, ScheduledRun

    nightly = ScheduledRun("`nightly`", T0 + 5000, "2026-12-06T02:00:00.000Z")
    runs = {"scheduled": (nightly,)}
    # off: the server stops at its idle deadline, and says which run will not happen
    off = config(server_idle_timeout=600, shutdown_warning=60)
    warn = decide(snapshot(550, **runs), off).server
    assert (warn.action, warn.deadline) == ("warn", T0 + 600), warn
    assert warn.cancels == "`nightly` at 2026-12-06T02:00:00.000Z will not run"
    assert warn.cancels in warn.reason
    assert decide(snapshot(600, **runs), off).server.action == "shutdown"
    # a bound shorter than the gap: the same
    short = config(server_idle_timeout=600, shutdown_warning=60, scheduled_run_wait=4000)
    assert decide(snapshot(600, **runs), short).server.action == "shutdown"
    # within the bound: kept until the run has had time to start, and nothing is cancelled
    wait = config(server_idle_timeout=600, shutdown_warning=60, scheduled_run_wait=4400)
    keep = decide(snapshot(600, **runs), wait).server
    assert (keep.action, keep.rule) == ("keep", "scheduled_run_wait"), keep
    assert keep.deadline == T0 + 5000 + SCHEDULED_RUN_START
    assert "waiting for the scheduled run of `nightly`" in keep.reason and not keep.cancels
    # it did not start (the job's kernel never showed): the server stops then
    late = decide(snapshot(5000 + SCHEDULED_RUN_START, **runs), wait).server
    assert (late.action, late.rule) == ("shutdown", "scheduled_run_wait"), late


def test_a_reason_read_later_counts_to_then() -> None:
    """The status between two checks shows the loop's decisions with durations up to date."""
    d = decide_kernel(kernel(last=0), config(), T0 + 40)
    assert d.reason == "idle 40 s of cull_idle_timeout 100 s"
    assert d.reason_at(T0 + 70) == "idle 70 s of cull_idle_timeout 100 s"
    s = decide(snapshot(40, last_source="notes.md saved"), config(**IDLE_600)).server
    assert s.reason_at(T0 + 100) == (
        "idle 100 s of server_idle_timeout 600 s, last activity: notes.md saved"
    )
    w = decide(snapshot(560), config(**IDLE_600, shutdown_warning=60)).server
    assert (w.reason, w.reason_at(T0 + 590)) == (
        "shutting down in 40 s: server_idle_timeout",
        "shutting down in 10 s: server_idle_timeout",
    )


def test_braces_in_a_command_line_are_not_format_fields() -> None:
    odd = SourceState("process", "7@1.00", "python -c print({1}{x})", T0, at(0), "50 % CPU")
    d = decide(snapshot(30, sources=(odd,)), config(**IDLE_600)).server
    assert d.reason == "process 7 `python -c print({1}{x})` at 50 % CPU for 30 s"


def process(busy: float | None, cpu: str = "97 % CPU") -> SourceState:
    return SourceState(
        "process", "4242@1700000000.00", "python train.py", T0, busy_since=at(busy), detail=cpu
    )


def test_the_hub_hears_now_while_a_process_works_until_the_cap() -> None:
    c = config(**IDLE_600, max_busy_time=1000)

    def reported(snap: Snapshot) -> float:
        plan = decide(snap, c)
        assert plan.reported_activity == reported_activity(snap, working(snap, c))
        return plan.reported_activity

    assert reported(snapshot(900, sources=(process(busy=0),))) == T0 + 900
    assert reported(snapshot(1000, sources=(process(busy=0),))) == T0
    assert reported(snapshot(900, sources=(process(busy=None),))) == T0


@pytest.mark.parametrize(
    ("fields", "kept_by", "busy_for"),
    [
        case("kernel-busy", {"kernels": (kernel(busy=100),)}, "kernel busy", 800),
        case("kernel-computing", {"kernels": (kernel(computing=300),)}, "kernel computing", 600),
        case(
            "process",
            {"sources": (process(busy=400),)},
            "process `python train.py` working",
            500,
        ),
        case(
            "another-extensions-source",
            {"sources": (SourceState("x", "x", "my-extension", T0, busy_since=T0 + 850),)},
            "my-extension busy",
            50,
        ),
        # past the cap, a busy kernel keeps nothing: the process does
        case(
            "capped-kernel-then-process",
            {"kernels": (kernel(busy=-500),), "sources": (process(busy=400),)},
            "process `python train.py` working",
            500,
        ),
        case("nothing", {"kernels": (kernel(),)}, "", None),
    ],
)
def test_the_server_says_what_keeps_it_in_a_few_words(
    fields: dict[str, Any], kept_by: str, busy_for: float | None
) -> None:
    decision = decide(snapshot(900, **fields), config(**IDLE_600, max_busy_time=1000)).server
    assert decision.kept_by == kept_by, decision
    if busy_for is not None:
        assert decision.since("busy") == T0 + 900 - busy_for


def test_the_plan_says_what_works_also_with_no_server_rule_on() -> None:
    """The usage metric reads what works from the plan, by kind, whatever the server rules."""
    sources = (SourceState("x", "x", "my-extension", T0, busy_since=T0 + 850),)
    for options in (IDLE_600, {"server_idle_timeout": 0}):
        c = config(**options, max_busy_time=1000)
        kinds = [
            None if (w := decide(snapshot(900, **fields), c).working) is None else w.kind
            for fields in (
                {"kernels": (kernel(busy=100),)},
                {"sources": (process(busy=400),)},
                {"sources": sources},
                {"kernels": (kernel(),)},
            )
        ]
        assert kinds == ["kernel", "process", "extension", None], options


# -- the server ------------------------------------------------------------------------------

BUSY = {"kernels": (kernel(busy=0),)}
IDLE_600 = {"server_idle_timeout": 600}
BOTH = {"server_idle_timeout": 600, "max_server_age": 2000}

# fmt: off
SERVER = [
    # name, options, snapshot, now, action, deadline, rule, reason contains
    case("never-used-before-timeout", IDLE_600, {}, 599, "keep", 600, SERVER_IDLE,
         ("idle 599 s", "server_idle_timeout")),
    case("never-used-shuts-down-timeout-after-start", IDLE_600, {}, 600, "shutdown", 600,
         SERVER_IDLE, ("idle 600 s >= server_idle_timeout 600 s",)),
    case("idle-after-activity-before", IDLE_600, {"last": 300}, 899, "keep", 900, SERVER_IDLE,
         ("idle 599 s", "server_idle_timeout")),
    case("idle-after-activity-shuts-down", IDLE_600, {"last": 300}, 900, "shutdown", 900,
         SERVER_IDLE, ("idle 600 s >= server_idle_timeout 600 s",)),
    case("busy-kernel-keeps-server-no-deadline", IDLE_600, BUSY, NEVER, "keep", None, "",
         ("kernel k1 busy",)),
    case("busy-kernel-under-cap-keeps-server", {**IDLE_600, "max_busy_time": 3000}, BUSY,
         2999, "keep", None, "", ("kernel k1 busy",)),
    case("busy-kernel-past-cap-does-not-keep-server", {**IDLE_600, "max_busy_time": 300}, BUSY,
         600, "shutdown", 600, SERVER_IDLE, (">= server_idle_timeout",)),
    case("dead-busy-kernel-does-not-keep-server", IDLE_600,
         {"kernels": (kernel(busy=0, dead=0),)}, 600, "shutdown", 600, SERVER_IDLE,
         (">= server_idle_timeout",)),
    case("open-tabs-on-idle-kernel-do-not-keep-server", IDLE_600,
         {"kernels": (kernel(connections=3),)}, 600, "shutdown", 600, SERVER_IDLE,
         (">= server_idle_timeout",)),
    case("busy-extension-source-keeps-server", IDLE_600,
         {"sources": (SourceState("extension", "lsp", "lsp", T0, busy_since=T0 + 10),)}, NEVER,
         "keep", None, "", ("lsp busy",)),
    case("idle-extension-source-does-not-keep-server", IDLE_600,
         {"sources": (SourceState("extension", "lsp", "lsp", T0),)}, 600, "shutdown", 600,
         SERVER_IDLE, (">= server_idle_timeout",)),
    case("working-process-keeps-server", IDLE_600, {"sources": (process(busy=0),)}, NEVER,
         "keep", None, "", ("process 4242 `python train.py` at 97 % CPU for",)),
    case("process-past-cap-does-not-keep-server", {**IDLE_600, "max_busy_time": 300},
         {"sources": (process(busy=0),)}, 600, "shutdown", 600, SERVER_IDLE,
         (">= server_idle_timeout",)),
    case("computing-kernel-keeps-server", IDLE_600, {"kernels": (kernel(computing=0),)}, NEVER,
         "keep", None, "", ("kernel k1 computing",)),
    case("a-written-document-is-not-busy", IDLE_600,
         {"sources": (SourceState("document", "a.md", "a.md", T0, detail="saved"),)}, 600,
         "shutdown", 600, SERVER_IDLE, (">= server_idle_timeout",)),
    case("the-last-activity-is-named-while-kept", IDLE_600, {"last_source": "notes.md saved"},
         100, "keep", 600, SERVER_IDLE,
         ("idle 100 s of server_idle_timeout 600 s, last activity: notes.md saved",)),
    case("the-last-activity-is-named-at-shutdown", IDLE_600, {"last_source": "rstudio: input"},
         600, "shutdown", 600, SERVER_IDLE,
         ("idle 600 s >= server_idle_timeout 600 s, last activity: rstudio: input",)),
    case("server_idle_timeout-0-disables", {"server_idle_timeout": 0}, {}, NEVER, "keep", None,
         "", ("server_idle_timeout is 0",)),
    case("max_server_age-fires-while-active", {**IDLE_600, "max_server_age": 1000},
         {"last": 990}, 1000, "shutdown", 1000, AGE, ("age 1000 s >= max_server_age 1000 s",)),
    case("busy-server-kept-until-max_server_age", {**IDLE_600, "max_server_age": 1000}, BUSY,
         999, "keep", 1000, AGE, ("kernel k1 busy", "max_server_age")),
    case("max_server_age-fires-while-busy", {**IDLE_600, "max_server_age": 1000}, BUSY,
         1000, "shutdown", 1000, AGE, (">= max_server_age 1000 s",)),
    case("max_server_age-alone", {"max_server_age": 1000}, {}, 1000, "shutdown", 1000, AGE,
         (">= max_server_age 1000 s",)),
    case("earlier-idle-deadline-named-while-kept", BOTH, {}, 500, "keep", 600, SERVER_IDLE,
         ("server_idle_timeout",)),
    case("earlier-idle-deadline-wins", BOTH, {}, 600, "shutdown", 600, SERVER_IDLE,
         (">= server_idle_timeout",)),
    case("earlier-age-deadline-named-while-kept", BOTH, {"last": 1500}, 1999, "keep", 2000, AGE,
         ("max_server_age",)),
    case("earlier-age-deadline-wins", BOTH, {"last": 1500}, 2000, "shutdown", 2000, AGE,
         (">= max_server_age",)),
    case("before-warning-window", {**IDLE_600, "shutdown_warning": 60}, {}, 539, "keep", 600,
         SERVER_IDLE, ("server_idle_timeout",)),
    case("warning-window-opens-at-deadline-minus-warning", {**IDLE_600, "shutdown_warning": 60},
         {}, 540, "warn", 600, SERVER_IDLE, ("shutting down in 60 s", "server_idle_timeout")),
    case("warning-window-last-second", {**IDLE_600, "shutdown_warning": 60}, {}, 599, "warn",
         600, SERVER_IDLE, ("shutting down in 1 s",)),
    case("warning-window-ends-in-shutdown", {**IDLE_600, "shutdown_warning": 60}, {}, 600,
         "shutdown", 600, SERVER_IDLE, (">= server_idle_timeout",)),
    case("warning-before-max_server_age-while-busy",
         {**IDLE_600, "max_server_age": 1000, "shutdown_warning": 100}, BUSY, 900, "warn", 1000,
         AGE, ("shutting down in 100 s", "max_server_age")),
    case("shutdown_warning-0-never-warns", {**IDLE_600, "shutdown_warning": 0}, {}, 599, "keep",
         600, SERVER_IDLE, ("server_idle_timeout",)),
    case("keepalive-pushes-idle-deadline", IDLE_600, {"keepalive": 2000}, 600, "keep", 2000,
         KEEPALIVE, ("keep-alive",)),
    case("keepalive-expired-shuts-down", IDLE_600, {"keepalive": 2000}, 2000, "shutdown", 2000,
         KEEPALIVE, ("keep-alive", ">= server_idle_timeout 600 s")),
    case("keepalive-moves-the-warning-too", {**IDLE_600, "shutdown_warning": 60},
         {"keepalive": 2000}, 1940, "warn", 2000, KEEPALIVE, ("shutting down in 60 s",)),
    case("keepalive-moves-the-warning-not-before", {**IDLE_600, "shutdown_warning": 60},
         {"keepalive": 2000}, 1939, "keep", 2000, KEEPALIVE, ("keep-alive",)),
    case("keepalive-before-idle-deadline-ignored", IDLE_600, {"keepalive": 200}, 600, "shutdown",
         600, SERVER_IDLE, (">= server_idle_timeout",)),
    # stop when done: shutdown_warning (or 60 s) after nothing works, not server_idle_timeout
    case("stop-when-done-waits-while-busy", {**IDLE_600, "shutdown_warning": 30},
         {**BUSY, "stop_when_done": T0}, NEVER, "keep", None, "", ("busy", "stops when it is done")),
    case("stop-when-done-warns-at-once-when-done", {**IDLE_600, "shutdown_warning": 30},
         {"stop_when_done": T0 + 100, "last": 50}, 110, "warn", 130, "stop_when_done",
         ("shutting down in 20 s: stop_when_done",)),
    case("stop-when-done-fires", {**IDLE_600, "shutdown_warning": 30},
         {"stop_when_done": T0 + 100, "last": 50}, 130, "shutdown", 130, "stop_when_done",
         ("stop when done: nothing worked for 80 s",)),
    case("stop-when-done-counts-from-the-last-activity", {**IDLE_600, "shutdown_warning": 30},
         {"stop_when_done": T0 + 100, "last": 400}, 429, "warn", 430, "stop_when_done", ()),
    case("stop-when-done-without-warning-waits-a-minute",
         {**IDLE_600, "shutdown_warning": 0}, {"stop_when_done": T0 + 100}, 159, "keep", 160,
         "stop_when_done", ("stop when done: nothing works, shutting down in 1 s",)),
    case("stop-when-done-also-when-server_idle_timeout-is-0", {"shutdown_warning": 0},
         {"stop_when_done": T0}, 60, "shutdown", 60, "stop_when_done", ()),
    case("stop-when-done-yields-to-a-keepalive", {**IDLE_600, "shutdown_warning": 30},
         {"stop_when_done": T0, "keepalive": 500}, 400, "keep", 500, "stop_when_done", ()),
    case("keepalive-never-extends-max_server_age", {**IDLE_600, "max_server_age": 800},
         {"keepalive": 5000}, 800, "shutdown", 800, AGE, (">= max_server_age 800 s",)),
]
# fmt: on


@pytest.mark.parametrize(
    ("options", "fields", "now", "action", "deadline", "rule", "words"), SERVER
)
def test_server(
    options: dict[str, Any],
    fields: dict[str, Any],
    now: float,
    action: str,
    deadline: float | None,
    rule: str,
    words: tuple[str, ...],
) -> None:
    d = decide(snapshot(now, **fields), config(**options)).server
    assert (d.kind, d.action) == ("server", action), d
    assert d.deadline == at(deadline), d
    assert d.rule == rule, d
    assert_reason(d.reason, words)


def test_server_idle_counts_from_last_activity() -> None:
    assert decide(snapshot(700, last=400), config(**IDLE_600)).server.idle == 300


# -- decide(): the plan and when to look again -----------------------------------------------

# fmt: off
HORIZON = [
    # name, options, kernels, horizon
    case("cull_interval-caps", {"cull_idle_timeout": 3600}, (), 300),
    case("shorter-cull_idle_timeout", {"cull_idle_timeout": 60}, (), 60),
    case("shorter-terminal_idle_timeout", {"terminal_idle_timeout": 30}, (), 30),
    case("shorter-max_busy_time", {"max_busy_time": 20}, (), 20),
    case("shorter-kernelspec-override", {}, (kernel(timeout_override=10),), 10),
    case("server_idle_timeout-minus-warning",
         {"cull_idle_timeout": 3600, "server_idle_timeout": 100, "shutdown_warning": 10}, (), 90),
    case("zeros-ignored",
         {"cull_idle_timeout": 0, "terminal_idle_timeout": 0, "max_busy_time": 0},
         (kernel(timeout_override=0),), 300),
    case("short-cull_interval", {"cull_interval": 5}, (), 5),
]
# fmt: on


@pytest.mark.parametrize(("options", "kernels", "expected"), HORIZON)
def test_horizon(
    options: dict[str, Any], kernels: tuple[KernelState, ...], expected: float
) -> None:
    c = config(**options)
    assert horizon(c, kernels) == expected
    # with no nearer deadline, the next check is exactly one horizon away
    plan = decide(snapshot(50, last=50, kernels=kernels), c)
    assert plan.next_check == T0 + 50 + expected, plan


# what warn_at says once the warning is out is no rule (yet): such rows do not check it
UNCHECKED: Any = object()
NO_KERNEL_RULES = {"cull_idle_timeout": 0, "cull_interval": 1000}
WARN_60 = {**NO_KERNEL_RULES, **IDLE_600, "shutdown_warning": 60}
TWO_KERNELS = {"kernels": (kernel("a"), kernel("b", last=200))}

# fmt: off
PLANS = [
    # name, options, snapshot, now, next_check, shutdown_at, warn_at
    case("earliest-kernel-deadline", {"cull_idle_timeout": 600}, TWO_KERNELS, 500,
         600, None, None),
    case("horizon-when-deadlines-are-far", {"cull_idle_timeout": 600}, TWO_KERNELS, 100,
         400, None, None),
    case("culled-kernel-deadline-not-reused", {"cull_idle_timeout": 600}, TWO_KERNELS, 600,
         800, None, None),
    case("terminal-deadline", {"cull_idle_timeout": 600},
         {"terminals": (TerminalState("1", T0 + 100),)}, 500, 700, None, None),
    case("busy-cap-deadline", {"cull_idle_timeout": 600, "max_busy_time": 1000},
         {"kernels": (kernel(busy=100),)}, 1050, 1100, None, None),
    case("warn-time-is-next-check", WARN_60, {}, 100, 540, 600, 540),
    case("while-warning-next-check-is-shutdown", WARN_60, {}, 550, 600, 600, UNCHECKED),
    case("no-warning-next-check-is-shutdown", {**NO_KERNEL_RULES, **IDLE_600}, {}, 100,
         600, 600, None),
    case("shutting-down-now", {**IDLE_600, "shutdown_warning": 60}, {}, 700, 800, 700, None),
    case("busy-server-has-no-shutdown-time", {**IDLE_600, "shutdown_warning": 60}, BUSY, 5000,
         5100, None, None),
    case("busy-server-until-max_server_age",
         {**NO_KERNEL_RULES, **BOTH, "cull_interval": 5000, "shutdown_warning": 100}, BUSY, 1000,
         1500, 2000, 1900),
]
# fmt: on


@pytest.mark.parametrize(
    ("options", "fields", "now", "next_check", "shutdown_at", "warn_at"), PLANS
)
def test_plan(
    options: dict[str, Any],
    fields: dict[str, Any],
    now: float,
    next_check: float,
    shutdown_at: float | None,
    warn_at: Any,
) -> None:
    c = config(**options)
    snap = snapshot(now, **fields)
    plan = decide(snap, c)
    assert plan.next_check == at(next_check), plan
    assert plan.shutdown_at == at(shutdown_at), plan
    if warn_at is not UNCHECKED:
        assert plan.warn_at == at(warn_at), plan
    assert_next_check_in_range(plan, snap, c)


def assert_next_check_in_range(plan: Plan, snap: Snapshot, c: PolicyConfig) -> None:
    """What holds for every plan: the next check is ahead, and at most one horizon ahead."""
    assert snap.now < plan.next_check <= snap.now + horizon(c, snap.kernels), plan
    assert horizon(c, snap.kernels) <= c.cull_interval


def test_plan_holds_one_decision_per_record() -> None:
    snap = snapshot(
        100,
        kernels=(kernel("old", last=-500), kernel("new", last=50), kernel("x", dead=-20)),
        terminals=(TerminalState("1", T0 - 500), TerminalState("2", T0 + 50)),
    )
    plan = decide(snap, config(**IDLE_600))
    assert [(d.id, d.action) for d in plan.kernels] == [
        ("old", "cull"),
        ("new", "keep"),
        ("x", "remove"),
    ]
    assert [(d.id, d.action) for d in plan.terminals] == [("1", "cull"), ("2", "keep")]
    assert (plan.server.action, plan.server.deadline) == ("keep", T0 + 600)
    # the kernel and the terminal that stay are both due at 150, before the horizon (200)
    assert plan.next_check == T0 + 150
