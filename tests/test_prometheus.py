"""Usage in Prometheus, hub-wide: a real Prometheus (Debian's package) scrapes two real
single-user servers through a real JupyterHub's proxy with a service token, and the README's
PromQL queries answer "which servers have been idle longest" and "server-hours kept by each kind
of work"."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from jupyter_idle_ext.pytest_plugin import (
    STATUS_TOKEN,
    Hub,
    free_port,
    hub_factory,
    on_ci,
    wait_until,
)

# the README's queries ("Usage in Prometheus"), word for word
IDLE_LONGEST = "topk(10, max by (user, server) (jupyter_idle_ext_idle_seconds))"
HOURS_BY_KIND = "sum by (kept_by) (increase(jupyter_idle_ext_kept_seconds_total[1d])) / 3600"


def require_prometheus() -> str:
    """Debian's prometheus (scripts/test.sh installs it), or fail under CI=true, else skip."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found:
        return found
    reason = "prometheus not found (apt-get install prometheus, or run scripts/test.sh)"
    if on_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def start_hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    with hub_factory(tmp_path) as start:
        yield start


class Prometheus:
    def __init__(self, binary: str, root: Path, hub: Hub, users: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        proxy = urllib.parse.urlsplit(hub.url).netloc
        jobs = "".join(
            f"""
  - job_name: jupyter-{user}
    metrics_path: /user/{user}/metrics
    authorization:
      credentials: {STATUS_TOKEN}
    static_configs:
      - targets: ["{proxy}"]
"""
            for user in users
        )
        config = root / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:{jobs}")
        self.log = (root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, 60)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def targets_up(self) -> bool:
        return len([r for r in self.query("up") if r["value"][1] == "1"]) == 2

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_prometheus_answers_which_servers_idle_longest_and_hours_by_kind(
    start_hub: Callable[..., Hub], tmp_path: Path
) -> None:
    binary = require_prometheus()
    hub = start_hub(
        environment={
            "JUPYTER_IDLE_SERVER_IDLE_TIMEOUT": "600",
            "JUPYTER_IDLE_CULL_IDLE_TIMEOUT": "600",
        },
        last_activity_interval=0,
    )
    for user in ("alice", "bob"):
        hub.create_user(user)
        hub.request_start(user)
    hub.wait_ready("alice")
    hub.wait_ready("bob")
    # alice's kernel works; bob's server has done nothing since it started
    cell = hub.execute("alice", "import time; time.sleep(20)", wait=False)
    prometheus = Prometheus(binary, tmp_path, hub, ["alice", "bob"])
    try:
        wait_until(prometheus.targets_up, 30)
        time.sleep(6)  # a few scrapes, for increase()

        def idle_longest() -> list[dict[str, Any]] | None:
            found = prometheus.query(IDLE_LONGEST)
            return found if len(found) == 2 else None

        found = wait_until(idle_longest, 20)
        # Prometheus drops the empty server label of a default server
        assert [r["metric"] for r in found] == [{"user": "bob"}, {"user": "alice"}], found
        assert float(found[0]["value"][1]) > float(found[1]["value"][1]) == 0.0, found

        def hours() -> dict[str, float] | None:
            by_kind = {
                r["metric"].get("kept_by", ""): float(r["value"][1])
                for r in prometheus.query(HOURS_BY_KIND)
            }
            return by_kind if by_kind.get("kernel", 0) > 0 and by_kind.get("idle", 0) > 0 else None

        by_kind = wait_until(hours, 20)
        # about 10 s of alice's busy kernel so far, and bob's idle server all along
        assert 2 / 3600 < by_kind["kernel"] < 60 / 3600, by_kind
        assert set(by_kind) <= {"kernel", "idle"}, by_kind
        per_server = prometheus.query(
            'sum by (user) (jupyter_idle_ext_kept_seconds_total{kept_by="kernel"})'
        )
        assert [r["metric"]["user"] for r in per_server] == ["alice"], per_server
        # bob's idle time followed no activity at all
        after = prometheus.query(
            'sum by (after) (jupyter_idle_ext_kept_seconds_total{kept_by="idle", user="bob"})'
        )
        assert [r["metric"]["after"] for r in after] == ["none"], after
    finally:
        prometheus.stop()
    cell.wait(60)
