"""The options: each one defined once, with its default, help, environment variable and check.

Every option is a trait of the ``IdleExtension`` config section. Its trait type reads the
default from ``$JUPYTER_IDLE_<NAME>`` when neither a config file nor the command line sets it
(as jupyterhub-singleuser's options read theirs), and checks every value, whichever way it
came, with a message naming the option: an idle culler that silently runs with a bad value
costs money. Checks across options (a warning shorter than its timeout) are in
:meth:`IdleOptions.policy_config`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
from typing import Any

from traitlets import Bool, Dict, Float, TraitError
from traitlets.config import Configurable

from .policy import PolicyConfig
from .sources.proxy import DEFAULT_KEEPALIVES

ENV_PREFIX = "JUPYTER_IDLE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# the admin's ceilings: read from the server's environment only; a value from any other source
# that asks for more, or for 0 (never), is cut to the ceiling
CEILINGS = {
    "server_idle_timeout": ENV_PREFIX + "SERVER_IDLE_TIMEOUT_MAX",
    "cull_idle_timeout": ENV_PREFIX + "CULL_IDLE_TIMEOUT_MAX",
    "max_keepalive": ENV_PREFIX + "KEEPALIVE_MAX",
}


def env_name(option: str) -> str:
    """The environment variable that sets the default of an option."""
    return ENV_PREFIX + option.upper()


class _FromEnv:
    """The part every option type shares: a default read from its environment variable."""

    name: str | None
    env_fallback: str | None = None
    # the default when no variable is set (traitlets keeps a container's default elsewhere)
    static_default: Any = None

    def _env_value(self) -> tuple[str, str] | None:
        assert self.name is not None
        for variable in (env_name(self.name), self.env_fallback):
            raw = os.environ.get(variable, "").strip() if variable else ""
            if raw:
                return variable, raw  # type: ignore[return-value]
        return None

    def parse(self, variable: str, raw: str) -> Any:
        raise NotImplementedError

    def default(self, obj: Any = None) -> Any:
        found = self._env_value()
        if found is None:
            return copy.deepcopy(self.static_default)
        return self.parse(*found)


class Seconds(_FromEnv, Float):  # type: ignore[type-arg]
    """A number of seconds; 0 disables the rule, or with ``positive`` it must be above 0.

    ``default_text`` describes a default that is computed (None here means "derived")."""

    unit = "seconds"
    unit_help = "Seconds"
    maximum = math.inf

    def __init__(
        self,
        default: float | None,
        *,
        help: str,
        zero: str = "disables it",
        positive: bool = False,
        default_text: str | None = None,
        env_fallback: str | None = None,
    ) -> None:
        self.positive = positive
        self.env_fallback = env_fallback
        self.static_default = default
        shown = default_text or f"{default:g}"
        rule = "must be > 0" if positive else f"0 {zero}"
        self._help_text = f"{help} {self.unit_help}; {rule}. Default {shown}"
        super().__init__(default, allow_none=default is None, config=True)  # type: ignore[call-overload]

    def class_init(self, cls: Any, name: str | None) -> None:
        super().class_init(cls, name)
        assert name is not None
        also = f", else ${self.env_fallback}" if self.env_fallback else ""
        self.help = f"{self._help_text}, from ${env_name(name)}{also}."

    def parse(self, variable: str, raw: str) -> float:
        try:
            return float(raw)
        except ValueError:
            raise TraitError(
                f"IdleExtension.{self.name}: ${variable}={raw!r} is not a number of {self.unit}"
            ) from None

    def validate(self, obj: Any, value: Any) -> float | None:
        if value is None and self.allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TraitError(
                f"IdleExtension.{self.name} must be a number of {self.unit}, "
                f"not the {type(value).__name__} {value!r}"
            )
        number = float(value)
        low = number < 0 or (self.positive and number == 0)
        if not math.isfinite(number) or low or number > self.maximum:
            allowed = "> 0" if self.positive else ">= 0 (0 disables it)"
            if self.maximum < math.inf:
                allowed += f" and <= {self.maximum:g}"
            raise TraitError(
                f"IdleExtension.{self.name} must be a number of {self.unit} {allowed}, "
                f"not {number!r}"
            )
        return number


class Percent(Seconds):
    """A percentage (of one CPU core, of a GPU); 0 disables what it measures."""

    unit = "percent"
    unit_help = "Percent"
    maximum = 100.0


class Flag(_FromEnv, Bool):  # type: ignore[type-arg]
    """True or false; from the environment as true/false, 1/0, yes/no or on/off."""

    def __init__(self, default: bool, *, help: str) -> None:
        self._help_text = f"{help} Default {str(default).lower()}"
        self.static_default = default
        super().__init__(default, config=True)

    def class_init(self, cls: Any, name: str | None) -> None:
        super().class_init(cls, name)
        assert name is not None
        self.help = f"{self._help_text}, from ${env_name(name)} (true/false)."

    def parse(self, variable: str, raw: str) -> bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise TraitError(
            f"IdleExtension.{self.name}: ${variable}={raw!r} is not a boolean (use true or false)"
        )

    def validate(self, obj: Any, value: Any) -> bool:
        if not isinstance(value, bool):
            raise TraitError(
                f"IdleExtension.{self.name} must be true or false, "
                f"not the {type(value).__name__} {value!r}"
            )
        return value


class Patterns(_FromEnv, Dict):  # type: ignore[type-arg,unused-ignore]
    """Per-app regular expressions: ``{app: {"requests": [...], "messages": [...]}}``; from the
    environment as JSON."""

    KEYS = ("requests", "messages")

    def __init__(self, default: dict[str, dict[str, list[str]]], *, help: str) -> None:
        self._help_text = help
        self.static_default = default
        super().__init__(default_value=default, config=True)

    def class_init(self, cls: Any, name: str | None) -> None:
        super().class_init(cls, name)
        assert name is not None
        self.help = f"{self._help_text} Default from ${env_name(name)} (JSON)."

    def parse(self, variable: str, raw: str) -> Any:
        try:
            return json.loads(raw)
        except ValueError as e:
            raise TraitError(f"IdleExtension.{self.name}: ${variable} is not JSON: {e}") from None

    def validate(self, obj: Any, value: Any) -> dict[str, dict[str, list[str]]]:
        option = f"IdleExtension.{self.name}"
        if not isinstance(value, dict):
            raise TraitError(f"{option} must map app names to patterns, not {value!r}")
        checked: dict[str, dict[str, list[str]]] = {}
        for app, rules in value.items():
            if not isinstance(app, str) or not isinstance(rules, dict):
                raise TraitError(
                    f'{option}[{app!r}] must be like {{"requests": [...], "messages": [...]}}'
                )
            unknown = set(rules) - set(self.KEYS)
            if unknown:
                raise TraitError(
                    f"{option}[{app!r}] has unknown keys {sorted(unknown)}; "
                    f"use {' and '.join(self.KEYS)}"
                )
            checked[app] = {}
            for key in self.KEYS:
                patterns = rules.get(key, [])
                if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                    raise TraitError(f"{option}[{app!r}][{key!r}] must be a list of strings")
                for pattern in patterns:
                    try:
                        re.compile(pattern)
                    except re.error as e:
                        raise TraitError(
                            f"{option}[{app!r}][{key!r}]: {pattern!r} is not a regular "
                            f"expression ({e})"
                        ) from None
                checked[app][key] = list(patterns)
        return checked


class IdleOptions(Configurable):
    """Every option of the extension; ``IdleExtension`` is built on it."""

    cull_idle_timeout = Seconds(
        3600,
        help="Cull a kernel after this long without activity. A kernelspec's "
        "metadata.cull_idle_timeout overrides it for that kernel, where 0 means never.",
        zero="never culls kernels",
    )
    cull_interval = Seconds(
        300,
        help="The longest wait between two checks; checks also happen at each deadline, so "
        "nothing is culled late.",
        positive=True,
    )
    cull_connected = Flag(
        True,
        help="Cull idle kernels even while a browser tab is connected to them: an open tab is "
        "not activity.",
    )
    cull_busy = Flag(
        False,
        help="Cull kernels by idle time even while they execute (off: a busy kernel is working).",
    )
    max_busy_time = Seconds(
        0,
        help="After a kernel has been busy this long it counts as stuck: being busy no longer "
        "protects it or the server, and it is culled once idle.",
        zero="means no cap: a busy kernel is never culled",
    )
    terminal_idle_timeout = Seconds(
        None,
        help="Cull a terminal after this long without input or output.",
        zero="never culls terminals",
        default_text="cull_idle_timeout",
    )
    server_idle_timeout = Seconds(
        3600,
        help="Shut the server down after this long without any activity, whatever tabs are open "
        "and whether kernels still exist.",
    )
    max_server_age = Seconds(0, help="Shut the server down at this age even if it is active.")
    shutdown_warning = Seconds(
        None,
        help="Log a WARNING this long before any shutdown. Must be shorter than the shutdown "
        "timeouts.",
        zero="means no warning",
        default_text="a tenth of the shortest shutdown timeout, at most 300",
    )
    shutdown_grace = Seconds(
        30,
        help="After an idle shutdown starts, the process exits with code 0 at the latest this "
        "many seconds later, even if a websocket or an extension holds it up.",
        positive=True,
    )
    hub_activity_interval = Seconds(
        300,
        help="Under JupyterHub, report the execution-aware last activity to the Hub this often, "
        "and only when it changed (jittered); jupyterhub-singleuser's own reporter, which counts "
        "REST polling, is switched off.",
        zero="disables our reporter and leaves jupyterhub-singleuser's alone",
        env_fallback="JUPYTERHUB_ACTIVITY_INTERVAL",
    )
    max_keepalive = Seconds(
        3600,
        help="The longest keep-alive a user may ask for with POST api/idle/keepalive. A "
        "keep-alive holds off the idle shutdown, never max_server_age.",
        zero="disables keep-alives (the endpoint answers 403)",
    )

    scheduled_run_wait = Seconds(
        0,
        help="Keep an idle server up for a scheduled notebook job (a jupyter-scheduler job "
        "definition with a schedule, which runs only while the server is up) due within this "
        "long after the idle shutdown would come. Off by default: on a hub that pays per "
        "server-hour, a nightly run would keep every idle server up all evening; the warning, "
        "the status and the log name the runs a stop cancels either way.",
        zero="never waits for a scheduled run",
    )
    process_check_interval = Seconds(
        15,
        help="How often this server's processes (everything it started, also after its parent "
        "is gone: nohup, setsid, tmux) are checked for work; they are checked again right "
        "before anything would be culled or the server shut down.",
        zero="turns the process source off",
    )
    process_cpu_threshold = Percent(
        10,
        help="A process of this server works while it uses at least this much of one CPU core "
        "(and until it falls below half of it); a kernel whose process works while it reports "
        "idle counts as busy. Far above what an idle kernel, shell or the server uses.",
        zero="never counts CPU work",
    )
    gpu_utilization_threshold = Percent(
        10,
        help="A process of this server works while it uses at least this much of a GPU's "
        "compute (utilisation, not memory held), measured through NVML when nvidia-ml-py and a "
        "driver are there.",
        zero="never counts GPU work",
    )
    fail_open = Flag(
        False,
        help="What to do when the extension fails while linking, loading or starting: off stops "
        "the server with a CRITICAL line naming the failure (an idle culler that silently does "
        "not run costs money); on logs the CRITICAL line and runs the server without idle "
        "culling or idle shutdown.",
    )
    proxy_keepalive_patterns = Patterns(
        DEFAULT_KEEPALIVES,
        help="What the clients of apps behind jupyter-server-proxy send by themselves, which is "
        'not the person\'s input: {app name: {"requests": [regex searched in the request path], '
        '"messages": [regex searched in client websocket messages; binary ones read as latin-1, '
        "one character per byte]}}. The default covers rstudio, vscode, code-server and desktop; "
        "a config file can add an app with c.IdleExtension.proxy_keepalive_patterns.update(...).",
    )

    @classmethod
    def option_names(cls) -> list[str]:
        return [name for name, trait in cls.class_traits().items() if isinstance(trait, _FromEnv)]

    def check_options(self) -> None:
        """Read every option now, so that a bad value (from the environment, say) fails here."""
        for name in self.option_names():
            getattr(self, name)

    def policy_config(self, log: Any = None) -> PolicyConfig:
        """The options the rules read, cut to the admin's ceilings and cross-checked; raises
        TraitError naming the option."""
        self.check_options()
        self.apply_ceilings(log)
        return _policy({name: getattr(self, name) for name in self.option_names()})

    def ceilings(self) -> dict[str, float]:
        """The admin's ceilings in force, by option: from the server's environment only (the
        one the spawner sets), never from a config file a user can write."""
        found = {}
        for option, variable in CEILINGS.items():
            raw = os.environ.get(variable, "").strip()
            if not raw:
                continue
            try:
                value = float(raw)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value <= 0:
                raise TraitError(
                    f"${variable}={raw!r} (the ceiling of IdleExtension.{option}) must be a "
                    "number of seconds above 0"
                )
            found[option] = value
        return found

    def apply_ceilings(self, log: Any = None) -> None:
        """Cut an option that asks for more than its ceiling, or for 0 (never), to the
        ceiling, with one WARNING naming both values and where each came from."""
        for option, ceiling in self.ceilings().items():
            value = getattr(self, option)
            if 0 < value <= ceiling:
                continue
            if log is not None:
                log.warning(
                    "IdleExtension.%s = %g (%s, from %s) is above the ceiling $%s = %g "
                    "(from the server's environment): using %g s.",
                    option,
                    value,
                    "never" if value == 0 else "seconds",
                    self._origin(option),
                    CEILINGS[option],
                    ceiling,
                    ceiling,
                )
            setattr(self, option, ceiling)

    def _origin(self, option: str) -> str:
        if option in self.config.get(type(self).__name__, {}):
            return "the configuration (a config file or the command line)"
        if os.environ.get(env_name(option), "").strip():
            return f"${env_name(option)}"
        return "the default"

    @classmethod
    def default_policy(cls, **changes: Any) -> PolicyConfig:
        """The policy of the static defaults (no environment), with ``changes``: for tests and
        benchmarks, which must not depend on the machine's settings."""
        traits = cls.class_traits()
        options: dict[str, _FromEnv] = {n: traits[n] for n in cls.option_names()}  # type: ignore[misc]
        values = {name: trait.static_default for name, trait in options.items()}
        return _policy({**values, **changes})


def _policy(values: dict[str, Any]) -> PolicyConfig:
    shutdown_timeouts = [
        t for t in (values["server_idle_timeout"], values["max_server_age"]) if t > 0
    ]
    warning: float | None = values["shutdown_warning"]
    if warning is None:
        warning = min([300.0, *[t / 10 for t in shutdown_timeouts]]) if shutdown_timeouts else 0.0
    for option in ("server_idle_timeout", "max_server_age"):
        timeout = values[option]
        if warning and timeout and warning >= timeout:
            raise TraitError(
                f"IdleExtension.shutdown_warning ({warning:g} s) must be shorter than "
                f"IdleExtension.{option} ({timeout:g} s), or 0 for no warning"
            )
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    chosen = {name: value for name, value in values.items() if name in fields}
    return PolicyConfig(**{**chosen, "shutdown_warning": warning})
