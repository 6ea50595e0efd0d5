"""JupyterHub integration: report execution-aware activity to the Hub, and stop through the Hub.

The Hub only moves a server's ``last_activity`` forward, so it can only see the truth when this is
the one reporter: jupyterhub-singleuser's own (which counts REST polling) is switched off while
this one runs. The token is sent in a header and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .activity import ActivityTracker
from .metrics import HUB_REPORTS

# bounded retries of one report: waits of about 1, 2, 4, 8 s (jittered), never past the interval
RETRIES = 4
REQUEST_TIMEOUT = 10.0
# asking the Hub to stop us must not hold the shutdown up when the Hub hangs
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class HubEnvironment:
    """What JupyterHub tells a server it spawned, through environment variables."""

    activity_url: str
    api_url: str
    token: str
    user: str
    server_name: str

    @classmethod
    def from_environ(cls, environ: Any = os.environ) -> HubEnvironment | None:
        """The Hub's settings, or None when the server does not run under a Hub."""
        token = environ.get("JUPYTERHUB_API_TOKEN") or environ.get("JPY_API_TOKEN", "")
        url = environ.get("JUPYTERHUB_ACTIVITY_URL", "")
        if not (token and url):
            return None
        return cls(
            activity_url=url,
            api_url=environ.get("JUPYTERHUB_API_URL", "").rstrip("/"),
            token=token,
            user=environ.get("JUPYTERHUB_USER", ""),
            server_name=environ.get("JUPYTERHUB_SERVER_NAME", ""),
        )

    @property
    def server_url(self) -> str:
        """The Hub API address of this very server (default or named)."""
        user = quote(self.user, safe="")
        if self.server_name:
            return f"{self.api_url}/users/{user}/servers/{quote(self.server_name, safe='')}"
        return f"{self.api_url}/users/{user}/server"


def _describe_error(e: BaseException) -> str:
    """One line about a failed request, without headers (where the token is)."""
    if isinstance(e, HTTPClientError):
        return f"HTTP {e.code}: {e.message}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class HubReporter:
    """Posts the server's last activity to the Hub every ``interval`` seconds, only when it moved.

    ``last_activity`` returns the monotonic time of the last activity, or now while something
    works; it comes from the check loop's plan, so a kernel stuck past ``max_busy_time`` is not
    reported.
    """

    def __init__(
        self,
        *,
        hub: HubEnvironment,
        tracker: ActivityTracker,
        interval: float,
        log: Any,
        last_activity: Callable[[], Awaitable[float]] | None = None,
        http_client: AsyncHTTPClient | None = None,
    ) -> None:
        self.hub = hub
        self.tracker = tracker

        async def recorded() -> float:
            return tracker.last_activity

        # the check loop's reported activity (now while something works)
        self.last_activity: Callable[[], Awaitable[float]] = last_activity or recorded
        self.interval = interval
        self.log = log
        self.http = http_client or AsyncHTTPClient()
        # reported state, for the status endpoint and tests
        self.last_sent: float | None = None
        self.last_report: str | None = None
        self.last_error: str | None = None
        self.posts = 0
        self.failures = 0
        # the wait between retries; a seam for tests
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # activity after an idle stretch longer than the interval is reported at once
        self.resumed = asyncio.Event()

        def on_activity(now: float, before: float) -> None:
            if now - before > self.interval:
                self.resumed.set()

        tracker.listen(on_activity)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.hub.token}", "Content-Type": "application/json"}

    async def run(self) -> None:
        self.log.info(
            "Reporting activity to the Hub every %g s (server %r)",
            self.interval,
            self.hub.server_name,
        )
        while True:
            try:
                await self.report()
            except Exception as e:
                self.log.error("Error notifying Hub of activity: %s", _describe_error(e))
            self.resumed.clear()
            wait = self.interval * (1 + 0.2 * (random.random() - 0.5))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.resumed.wait(), wait)

    async def report(self) -> bool:
        """Post the last activity if it moved since the last post; True when posted."""
        when = await self.last_activity()
        if self.last_sent is not None and when <= self.last_sent:
            self.log.debug("No activity to report to the Hub since %s", self.last_report)
            return False
        stamp = self.tracker.isoformat(when)
        body = json.dumps(
            {"servers": {self.hub.server_name: {"last_activity": stamp}}, "last_activity": stamp}
        )
        request = HTTPRequest(
            self.hub.activity_url,
            method="POST",
            headers=self._headers(),
            body=body,
            request_timeout=REQUEST_TIMEOUT,
        )
        for attempt in range(RETRIES + 1):
            try:
                self.posts += 1
                await self.http.fetch(request)
            except Exception as e:
                self.failures += 1
                HUB_REPORTS.labels("error").inc()
                self.last_error = _describe_error(e)
                self.log.debug("Error notifying Hub of activity", exc_info=True)
                self.log.error("Error notifying Hub of activity: %s", self.last_error)
                retriable = not isinstance(e, HTTPClientError) or e.code >= 500 or e.code == 599
                if not retriable or attempt == RETRIES:
                    return False
                await self.sleep(min(2**attempt * (0.5 + random.random()), self.interval))
                continue
            HUB_REPORTS.labels("ok").inc()
            self.last_sent = when
            self.last_report = stamp
            self.last_error = None
            self.log.debug("Reported activity %s to the Hub", stamp)
            return True
        return False

    async def stop_server(self) -> bool:
        """Ask the Hub to stop this server, so it records the stop at once.

        Works when the server's token has ``delete:servers!server``; otherwise the process exits
        by itself and the Hub notices at its next poll. True when the Hub accepted.
        """
        if not (self.hub.api_url and self.hub.user):
            return False
        request = HTTPRequest(
            self.hub.server_url,
            method="DELETE",
            headers=self._headers(),
            connect_timeout=STOP_TIMEOUT,
            request_timeout=STOP_TIMEOUT,
        )
        try:
            response = await self.http.fetch(request)
        except HTTPClientError as e:
            if e.code == 403:
                self.log.info(
                    "The Hub does not let this server stop itself (grant delete:servers!server in "
                    "c.Spawner.server_token_scopes); exiting, the Hub notices at its next poll."
                )
            else:
                self.log.error("Could not stop the server through the Hub: %s", _describe_error(e))
            return False
        except Exception as e:
            self.log.error("Could not stop the server through the Hub: %s", _describe_error(e))
            return False
        self.log.info("Asked the Hub to stop this server (HTTP %s).", response.code)
        return True
