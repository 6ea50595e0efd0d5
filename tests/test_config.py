"""Configuration: every option from config, command line and environment, and bad values refused.

In-process tests read the options as start-up does (``policy_config()`` and ``shutdown_grace``);
real ``jupyter server`` processes check that a bad value stops the server with a line naming the
option, and that the start-up INFO line shows what took effect.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from traitlets import TraitError
from traitlets.config import Config

from jupyter_idle_ext.app import IdleExtension
from jupyter_idle_ext.options import Seconds, env_name
from jupyter_idle_ext.policy import PolicyConfig
from jupyter_idle_ext.pytest_plugin import EXIT_SLACK, ServerProcess, wait_until

NAN = math.nan
INF = math.inf

# every seconds option (0 disables it) and those that must be above 0, as the app lists them
_TRAITS = IdleExtension.class_traits()
_ALL_SECONDS = [n for n in IdleExtension.option_names() if isinstance(_TRAITS[n], Seconds)]
SECONDS = [n for n in _ALL_SECONDS if not _TRAITS[n].positive]
POSITIVE = [n for n in _ALL_SECONDS if _TRAITS[n].positive]
# the seconds options the idle policy itself reads (the others configure the Hub and keep-alive)
POLICY_SECONDS = [o for o in SECONDS if o in {f.name for f in dataclasses.fields(PolicyConfig)}]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No JUPYTER_IDLE_* variable of the machine running the tests leaks into a test."""
    for name in list(os.environ):
        if name.startswith("JUPYTER_IDLE_") or name == "JUPYTERHUB_ACTIVITY_INTERVAL":
            monkeypatch.delenv(name)


def case(name: str, *values: Any) -> Any:
    """One row of a table, named by its test id."""
    return pytest.param(*values, id=name)


def start_up(options: dict[str, Any] | None = None) -> tuple[PolicyConfig, float]:
    """What start-up reads: the cross-checked policy, and the shutdown grace."""
    app = IdleExtension(config=Config({"IdleExtension": options or {}}))
    return app.policy_config(), app.shutdown_grace


def refusal(options: dict[str, Any] | None = None) -> str:
    """The message of the TraitError that start-up must raise."""
    with pytest.raises(TraitError) as info:
        start_up(options)
    return str(info.value)


def assert_names(message: str, option: str, allowed: str) -> None:
    """The message names the option as it is configured, and says what is allowed (a regex)."""
    assert f"IdleExtension.{option}" in message, f"option not named: {message!r}"
    assert re.search(allowed, message), f"{allowed!r} (what is allowed) not in {message!r}"


# -- invalid values ----------------------------------------------------------------------------

# fmt: off
INVALID_CONFIG = [
    # name, options, the option at fault, what the message says is allowed
    case("negative-cull_idle_timeout", {"cull_idle_timeout": -1}, "cull_idle_timeout", ">= 0"),
    case("negative-max_busy_time", {"max_busy_time": -0.5}, "max_busy_time", ">= 0"),
    case("negative-terminal_idle_timeout", {"terminal_idle_timeout": -10},
         "terminal_idle_timeout", ">= 0"),
    case("negative-server_idle_timeout", {"server_idle_timeout": -1}, "server_idle_timeout",
         ">= 0"),
    case("negative-max_server_age", {"max_server_age": -3600}, "max_server_age", ">= 0"),
    case("negative-shutdown_warning", {"shutdown_warning": -1}, "shutdown_warning", ">= 0"),
    case("nan-cull_idle_timeout", {"cull_idle_timeout": NAN}, "cull_idle_timeout", ">= 0"),
    case("inf-server_idle_timeout", {"server_idle_timeout": INF}, "server_idle_timeout", ">= 0"),
    case("minus-inf-max_server_age", {"max_server_age": -INF}, "max_server_age", ">= 0"),
    case("nan-terminal_idle_timeout", {"terminal_idle_timeout": NAN}, "terminal_idle_timeout",
         ">= 0"),
    case("zero-cull_interval", {"cull_interval": 0}, "cull_interval", "> 0"),
    case("negative-cull_interval", {"cull_interval": -5}, "cull_interval", "> 0"),
    case("nan-cull_interval", {"cull_interval": NAN}, "cull_interval", "> 0"),
    case("inf-cull_interval", {"cull_interval": INF}, "cull_interval", "> 0"),
    case("zero-shutdown_grace", {"shutdown_grace": 0}, "shutdown_grace", "> 0"),
    case("negative-shutdown_grace", {"shutdown_grace": -1}, "shutdown_grace", "> 0"),
    case("warning-equals-server_idle_timeout",
         {"server_idle_timeout": 600, "shutdown_warning": 600}, "shutdown_warning",
         "shorter than IdleExtension.server_idle_timeout"),
    case("warning-above-default-server_idle_timeout", {"shutdown_warning": 4000},
         "shutdown_warning", "shorter than IdleExtension.server_idle_timeout"),
    case("warning-equals-max_server_age",
         {"server_idle_timeout": 0, "max_server_age": 600, "shutdown_warning": 600},
         "shutdown_warning", "shorter than IdleExtension.max_server_age"),
    case("warning-above-max_server_age-only", {"max_server_age": 600, "shutdown_warning": 900},
         "shutdown_warning", "shorter than IdleExtension.max_server_age"),
    case("string-for-float", {"cull_idle_timeout": "one hour"}, "cull_idle_timeout",
         "float|number"),
    case("numeric-string-for-float", {"cull_interval": "60"}, "cull_interval", "float|number"),
    case("list-for-float", {"terminal_idle_timeout": [60]}, "terminal_idle_timeout",
         "float|number"),
    case("string-for-bool", {"cull_connected": "maybe"}, "cull_connected", "bool|true or false"),
    case("int-for-bool", {"cull_busy": 2}, "cull_busy", "bool|true or false"),
]
# fmt: on


@pytest.mark.parametrize(("options", "option", "allowed"), INVALID_CONFIG)
def test_invalid_config_is_refused(options: dict[str, Any], option: str, allowed: str) -> None:
    assert_names(refusal(options), option, allowed)


# fmt: off
INVALID_ENV = [
    # name, variable, value, the option at fault, what the message says is allowed
    case("not-a-number", "JUPYTER_IDLE_CULL_IDLE_TIMEOUT", "abc", "cull_idle_timeout",
         "not a number of seconds"),
    case("units-not-accepted", "JUPYTER_IDLE_TERMINAL_IDLE_TIMEOUT", "1h",
         "terminal_idle_timeout", "not a number of seconds"),
    case("not-a-number-positive-option", "JUPYTER_IDLE_SHUTDOWN_GRACE", "soon", "shutdown_grace",
         "not a number of seconds"),
    case("not-a-boolean", "JUPYTER_IDLE_CULL_CONNECTED", "maybe", "cull_connected",
         "true or false"),
    case("number-not-a-boolean", "JUPYTER_IDLE_CULL_BUSY", "2", "cull_busy", "true or false"),
    # numbers that parse but are out of range must meet the same checks as config values
    case("negative", "JUPYTER_IDLE_CULL_IDLE_TIMEOUT", "-5", "cull_idle_timeout", ">= 0"),
    case("nan", "JUPYTER_IDLE_MAX_BUSY_TIME", "nan", "max_busy_time", ">= 0"),
    case("inf", "JUPYTER_IDLE_SERVER_IDLE_TIMEOUT", "inf", "server_idle_timeout", ">= 0"),
    case("zero-cull_interval", "JUPYTER_IDLE_CULL_INTERVAL", "0", "cull_interval", "> 0"),
    case("negative-shutdown_grace", "JUPYTER_IDLE_SHUTDOWN_GRACE", "-1", "shutdown_grace", "> 0"),
    case("warning-not-shorter", "JUPYTER_IDLE_SHUTDOWN_WARNING", "3600", "shutdown_warning",
         "shorter than IdleExtension.server_idle_timeout"),
]
# fmt: on


@pytest.mark.parametrize(("variable", "value", "option", "allowed"), INVALID_ENV)
def test_invalid_env_var_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, option: str, allowed: str
) -> None:
    monkeypatch.setenv(variable, value)
    message = refusal()
    assert_names(message, option, allowed)
    if "not a" in allowed:
        # a value that does not even parse is shown with the variable it came from
        assert f"${variable}={value!r}" in message


@pytest.mark.parametrize(
    ("option", "value"),
    [
        *((o, v) for o in SECONDS for v in (-1, NAN, INF)),
        *((o, v) for o in POSITIVE for v in (0, -1)),
    ],
)
def test_assigning_a_bad_value_is_refused(option: str, value: float) -> None:
    app = IdleExtension()
    with pytest.raises(TraitError) as info:
        setattr(app, option, value)
    assert f"IdleExtension.{option}" in str(info.value)


class Lines(logging.Handler):
    """Every record of a logger, as (level, message)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


# fmt: off
REFUSED_ARGV = [
    # name, command line, the option at fault
    case("negative", ["--IdleExtension.cull_idle_timeout=-60"], "cull_idle_timeout"),
    case("not-a-number", ["--IdleExtension.max_busy_time=abc"], "max_busy_time"),
    case("not-a-boolean", ["--IdleExtension.cull_busy=maybe"], "cull_busy"),
    case("zero-cull_interval", ["--IdleExtension.cull_interval=0"], "cull_interval"),
    case("zero-shutdown_grace", ["--IdleExtension.shutdown_grace=0"], "shutdown_grace"),
    case("warning-not-shorter",
         ["--IdleExtension.server_idle_timeout=600", "--IdleExtension.shutdown_warning=600"],
         "shutdown_warning"),
]
# fmt: on


@pytest.mark.parametrize(("argv", "option"), REFUSED_ARGV)
def test_link_stops_the_server_on_a_bad_option(
    jp_environ: Any, argv: list[str], option: str
) -> None:
    """The command line as jupyter_server hands it over: a CRITICAL line, then exit code 1."""
    from jupyter_server.serverapp import ServerApp

    serverapp = ServerApp()
    serverapp.parse_command_line(argv)
    handler = Lines()
    serverapp.log.addHandler(handler)
    try:
        with pytest.raises(SystemExit) as info:
            IdleExtension()._link_jupyter_server_extension(serverapp)
    finally:
        serverapp.log.removeHandler(handler)
    assert info.value.code == 1
    critical = [message for level, message in handler.lines if level == "CRITICAL"]
    assert len(critical) == 1, handler.lines
    assert "invalid configuration" in critical[0]
    assert option in critical[0]


# -- valid values ------------------------------------------------------------------------------


def test_defaults() -> None:
    policy, grace = start_up()
    assert policy == PolicyConfig(
        cull_idle_timeout=3600.0,
        cull_interval=300.0,
        cull_connected=True,
        cull_busy=False,
        max_busy_time=0.0,
        terminal_idle_timeout=None,
        server_idle_timeout=3600.0,
        max_server_age=0.0,
        shutdown_warning=300.0,
    )
    assert policy.terminal_timeout == 3600.0
    assert grace == 30.0


# fmt: off
ENV_DEFAULTS = [
    # name, option, value of $JUPYTER_IDLE_<OPTION>, effective value
    case("cull_idle_timeout", "cull_idle_timeout", "120", 120.0),
    case("cull_idle_timeout-spaces", "cull_idle_timeout", " 120 ", 120.0),
    case("cull_idle_timeout-empty-is-unset", "cull_idle_timeout", "", 3600.0),
    case("cull_idle_timeout-0", "cull_idle_timeout", "0", 0.0),
    case("cull_interval", "cull_interval", "15.5", 15.5),
    case("cull_connected-false", "cull_connected", "false", False),
    case("cull_connected-0", "cull_connected", "0", False),
    case("cull_connected-no", "cull_connected", "no", False),
    case("cull_connected-OFF", "cull_connected", "OFF", False),
    case("cull_busy-true", "cull_busy", "true", True),
    case("cull_busy-1", "cull_busy", "1", True),
    case("cull_busy-Yes", "cull_busy", "Yes", True),
    case("cull_busy-on", "cull_busy", "on", True),
    case("max_busy_time", "max_busy_time", "7200", 7200.0),
    case("terminal_idle_timeout", "terminal_idle_timeout", "600", 600.0),
    case("terminal_idle_timeout-0", "terminal_idle_timeout", "0", 0.0),
    case("server_idle_timeout", "server_idle_timeout", "1800", 1800.0),
    case("server_idle_timeout-0", "server_idle_timeout", "0", 0.0),
    case("max_server_age", "max_server_age", "86400", 86400.0),
    case("shutdown_warning", "shutdown_warning", "30", 30.0),
    case("shutdown_warning-0", "shutdown_warning", "0", 0.0),
    case("shutdown_grace", "shutdown_grace", "5", 5.0),
]
# fmt: on


@pytest.mark.parametrize(("option", "raw", "expected"), ENV_DEFAULTS)
def test_env_var_sets_the_default(
    monkeypatch: pytest.MonkeyPatch, option: str, raw: str, expected: Any
) -> None:
    monkeypatch.setenv(env_name(option), raw)
    policy, grace = start_up()
    value = grace if option == "shutdown_grace" else getattr(policy, option)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("option", "env", "configured"),
    [
        ("cull_idle_timeout", "999", 120.0),
        ("cull_idle_timeout", "999", 0.0),
        ("cull_connected", "false", True),
        ("cull_busy", "true", False),
        ("terminal_idle_timeout", "60", None),
        ("shutdown_grace", "5", 45.0),
    ],
)
def test_config_overrides_env_var(
    monkeypatch: pytest.MonkeyPatch, option: str, env: str, configured: Any
) -> None:
    monkeypatch.setenv(env_name(option), env)
    policy, grace = start_up({option: configured})
    assert (grace if option == "shutdown_grace" else getattr(policy, option)) == configured


def test_env_var_is_read_when_the_app_is_built_not_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert start_up()[0].cull_idle_timeout == 3600.0
    monkeypatch.setenv("JUPYTER_IDLE_CULL_IDLE_TIMEOUT", "42")
    assert start_up()[0].cull_idle_timeout == 42.0


# fmt: off
DEFAULT_WARNING = [
    # name, server_idle_timeout, max_server_age, shutdown_warning in force
    case("tenth-capped-at-300", 3600, 0, 300.0),
    case("tenth-of-server_idle_timeout", 600, 0, 60.0),
    case("tenth-of-max_server_age", 0, 1200, 120.0),
    case("shortest-is-server_idle_timeout", 600, 1200, 60.0),
    case("shortest-is-max_server_age", 7200, 600, 60.0),
    case("both-long-capped-at-300", 36000, 86400, 300.0),
    case("short-timeout", 10, 0, 1.0),
    case("both-rules-off", 0, 0, 0.0),
]
# fmt: on


@pytest.mark.parametrize(("idle", "age", "warning"), DEFAULT_WARNING)
def test_default_shutdown_warning(idle: float, age: float, warning: float) -> None:
    policy, _ = start_up({"server_idle_timeout": idle, "max_server_age": age})
    assert policy.shutdown_warning == warning


@pytest.mark.parametrize(("warning", "expected"), [(0, 0.0), (30, 30.0), (599, 599.0)])
def test_explicit_shutdown_warning(warning: float, expected: float) -> None:
    policy, _ = start_up({"server_idle_timeout": 600, "shutdown_warning": warning})
    assert policy.shutdown_warning == expected


@pytest.mark.parametrize("source", ["config", "env"])
@pytest.mark.parametrize("option", POLICY_SECONDS)
def test_disabled_rule_is_0_in_the_policy(
    monkeypatch: pytest.MonkeyPatch, option: str, source: str
) -> None:
    if source == "env":
        monkeypatch.setenv(env_name(option), "0")
        policy, _ = start_up()
    else:
        policy, _ = start_up({option: 0})
    assert getattr(policy, option) == 0.0
    if source == "env":
        # the variable means what the same value in a config file means
        assert policy == start_up({option: 0})[0]
    # turning one rule off leaves the others as they were
    unchanged = {"cull_idle_timeout", "max_busy_time", "server_idle_timeout", "max_server_age"}
    for other in unchanged - {option}:
        assert getattr(policy, other) == getattr(start_up()[0], other), other


def test_terminal_timeout_follows_kernels_until_set() -> None:
    policy, _ = start_up({"cull_idle_timeout": 120})
    assert (policy.terminal_idle_timeout, policy.terminal_timeout) == (None, 120.0)
    policy, _ = start_up({"cull_idle_timeout": 120, "terminal_idle_timeout": 0})
    assert policy.terminal_timeout == 0.0


def test_every_option_names_its_env_var_in_its_help() -> None:
    for option in IdleExtension.option_names():
        assert f"${env_name(option)}" in IdleExtension.class_traits()[option].help, option


def test_every_option_has_a_readme_row() -> None:
    """The README's option table names each option with its variable and its default."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(r"^\| `(\w+)` \| (.*)$", readme, flags=re.MULTILINE)
    }
    for option in IdleExtension.option_names():
        assert option in rows, f"no README row for {option}"
        assert f"`{env_name(option)}`" in rows[option], rows[option]
        default = IdleExtension.class_traits()[option].static_default
        if isinstance(default, (bool, float, int)):
            shown = str(default).lower() if isinstance(default, bool) else f"{default:g}"
            assert f"| {shown} |" in rows[option], (option, shown, rows[option])


# -- real servers ------------------------------------------------------------------------------

STARTED = "IdleExtension] culling kernels idle for"
RUNNING = "is running at"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The servers' $JUPYTER_CONFIG_DIR: no config of the machine running the tests."""
    path = tmp_path / "config"
    path.mkdir()
    return path


@pytest.fixture
def start_server(tmp_path: Path, config_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``jupyter server`` processes; stop every one of them after the test."""
    servers: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        root = tmp_path / f"root-{len(servers)}"
        root.mkdir()
        server = ServerProcess(
            root, args=args, env={"JUPYTER_CONFIG_DIR": str(config_dir), **(env or {})}
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def refused(server: ServerProcess) -> str:
    """Wait for the server to give up, failing at once if it serves instead; its CRITICAL line."""
    wait_until(lambda: not server.running or STARTED in server.log() or RUNNING in server.log(), 60)
    assert not server.running, f"started with an invalid option:\n{server.log()[-3000:]}"
    assert server.wait_exit(60) != 0
    assert time.monotonic() - server.started < 60
    critical = [line for line in server.log().splitlines() if line.startswith("[C ")]
    assert critical, server.log()[-3000:]
    return critical[0]


def assert_line_names(line: str, option: str) -> None:
    assert "jupyter_idle_ext: invalid configuration" in line, line
    assert option in line and "IdleExtension" in line, line


# fmt: off
REFUSED_SERVERS: list[Any] = [
    # name, command line, environment, file in the config dir, the option at fault
    case("cli-zero-cull_interval", ["--IdleExtension.cull_interval=0"], {}, None,
         "cull_interval"),
    case("cli-negative-timeout", ["--IdleExtension.cull_idle_timeout=-60"], {}, None,
         "cull_idle_timeout"),
    case("cli-not-a-number", ["--IdleExtension.max_busy_time=abc"], {}, None, "max_busy_time"),
    case("cli-warning-not-shorter",
         ["--IdleExtension.server_idle_timeout=600", "--IdleExtension.shutdown_warning=600"], {},
         None, "shutdown_warning"),
    case("env-not-a-number", [], {"JUPYTER_IDLE_CULL_IDLE_TIMEOUT": "abc"}, None,
         "cull_idle_timeout"),
    case("env-not-a-boolean", [], {"JUPYTER_IDLE_CULL_CONNECTED": "maybe"}, None,
         "cull_connected"),
    case("env-zero-cull_interval", [], {"JUPYTER_IDLE_CULL_INTERVAL": "0"}, None,
         "cull_interval"),
    case("json-string-for-float", [], {},
         ("jupyter_server_config.json", json.dumps({"IdleExtension": {"cull_idle_timeout": "1h"}})),
         "cull_idle_timeout"),
    case("py-string-for-bool", ["--config={config_dir}/idle_config.py"], {},
         ("idle_config.py", 'c.IdleExtension.cull_busy = "no"\n'), "cull_busy"),
]
# fmt: on


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("args", "env", "config_file", "option"), REFUSED_SERVERS)
def test_server_refuses_to_start(
    start_server: Callable[..., ServerProcess],
    config_dir: Path,
    args: list[str],
    env: dict[str, str],
    config_file: tuple[str, str] | None,
    option: str,
) -> None:
    if config_file is not None:
        (config_dir / config_file[0]).write_text(config_file[1])
    server = start_server(*(a.format(config_dir=config_dir) for a in args), env=env)
    assert_line_names(refused(server), option)


@pytest.mark.timeout(120)
def test_server_logs_the_effective_policy(
    start_server: Callable[..., ServerProcess], config_dir: Path
) -> None:
    """Command line over environment over defaults, and a config file, all in one INFO line."""
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps({"IdleExtension": {"terminal_idle_timeout": 600}})
    )
    server = start_server(
        "--IdleExtension.cull_idle_timeout=120",
        "--IdleExtension.cull_interval=30",
        env={
            "JUPYTER_IDLE_CULL_IDLE_TIMEOUT": "999",
            "JUPYTER_IDLE_CULL_CONNECTED": "false",
            "JUPYTER_IDLE_MAX_BUSY_TIME": "1800",
            "JUPYTER_IDLE_SERVER_IDLE_TIMEOUT": "0",
            "JUPYTER_IDLE_MAX_SERVER_AGE": "7200",
        },
    )
    log = server.wait_log(STARTED, 60)
    [line] = [line for line in log.splitlines() if STARTED in line]
    assert line.startswith("[I "), line
    for effective in (
        "kernels idle for 120 s",
        "connected: kept",
        "max_busy_time 1800 s",
        "terminals idle for 600 s",
        "after off without activity",
        "at age 7200 s",
        "warning 300 s before",
        "every 30 s",
    ):
        assert effective in line, (effective, line)
    assert server.running


# -- the admin's ceilings ------------------------------------------------------------------------

CEILING = "JUPYTER_IDLE_SERVER_IDLE_TIMEOUT_MAX"


@pytest.mark.parametrize(
    ("configured", "env", "expected", "origin"),
    [
        # a user's config file asks for never, or for more: cut to the ceiling
        ({"server_idle_timeout": 0}, {}, 1800.0, "the configuration"),
        ({"server_idle_timeout": 9000}, {}, 1800.0, "the configuration"),
        # the default (3600) is above it too
        ({}, {}, 1800.0, "the default"),
        # an environment variable other than the ceiling's is a value like any other
        (
            {},
            {"JUPYTER_IDLE_SERVER_IDLE_TIMEOUT": "0"},
            1800.0,
            "$JUPYTER_IDLE_SERVER_IDLE_TIMEOUT",
        ),
        # within it: kept as asked, no warning
        ({"server_idle_timeout": 600}, {}, 600.0, None),
    ],
)
def test_a_ceiling_in_the_environment_cuts_what_any_other_source_asks_for(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    configured: dict[str, Any],
    env: dict[str, str],
    expected: float,
    origin: str | None,
) -> None:
    monkeypatch.setenv(CEILING, "1800")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = IdleExtension(config=Config({"IdleExtension": configured}))
    log = logging.getLogger("test.ceilings")
    with caplog.at_level(logging.WARNING, logger="test.ceilings"):
        policy = app.policy_config(log)
    assert policy.server_idle_timeout == expected
    assert app.ceilings() == {"server_idle_timeout": 1800.0}
    warnings = [r.getMessage() for r in caplog.records]
    if origin is None:
        assert warnings == []
    else:
        (warning,) = warnings
        assert f"from {origin}" in warning and f"${CEILING} = 1800" in warning, warning
        assert "using 1800 s" in warning


def test_each_ceiling_holds_for_its_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_IDLE_CULL_IDLE_TIMEOUT_MAX", "600")
    monkeypatch.setenv("JUPYTER_IDLE_KEEPALIVE_MAX", "900")
    app = IdleExtension(config=Config({"IdleExtension": {"cull_idle_timeout": 0}}))
    policy = app.policy_config()
    assert policy.cull_idle_timeout == 600
    assert app.max_keepalive == 900  # the default 3600 is cut


@pytest.mark.parametrize("raw", ["0", "-5", "soon", "inf"])
def test_a_bad_ceiling_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(CEILING, raw)
    with pytest.raises(TraitError, match=f"\\${CEILING}=.* must be a number of seconds above 0"):
        start_up()


def test_a_users_own_config_cannot_lift_the_ceiling_of_a_real_server(
    start_server: Any, tmp_path: Path
) -> None:
    """The user's ~/.jupyter/jupyter_server_config.py says never; the spawner's environment
    sets a ceiling of 8 s: the server stops at 8 s and says why."""
    user_config = tmp_path / "user-config"
    user_config.mkdir()
    (user_config / "jupyter_server_config.py").write_text(
        "c.IdleExtension.server_idle_timeout = 0\n"
    )
    server = start_server(
        "--IdleExtension.shutdown_warning=2",
        env={"JUPYTER_CONFIG_DIR": str(user_config), CEILING: "8"},
    ).wait_ready()
    _, doc = server.request("GET", "/api/idle", track=False)
    assert doc["ceilings"] == {"server_idle_timeout": 8}, doc["ceilings"]
    assert doc["policy"]["server_idle_timeout"] == 8
    assert server.wait_exit(30) == 0
    # 8 s after the server began serving (between its launch and its first answer)
    exited = time.monotonic()
    assert exited - server.started >= 8 - 1, exited - server.started
    assert exited - server.ready_at <= 8 + EXIT_SLACK, exited - server.ready_at
    log = server.log()
    assert log.count("is above the ceiling") == 1
    assert "IdleExtension.server_idle_timeout = 0 (never, from the configuration" in log
