"""`jupyter idle status`: the status endpoint explained in a terminal, for admins.

Finds the running servers of this user (as `jupyter server list` does) or takes ``--url`` and
``--token``, and prints what each server, kernel and terminal is doing and what will happen.
Reading the status is never activity.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any


def fetch_status(url: str, token: str, timeout: float = 10) -> dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + "/api/idle")
    if token:
        request.add_header("Authorization", f"token {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return dict(json.loads(response.read()))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.0f} min"
    return f"{value:.0f} s"


def explain(doc: dict[str, Any]) -> str:
    """The status document as lines a person reads."""
    server = doc["server"]
    lines = [f"  last activity {doc['last_activity']} ({_seconds(doc['idle_seconds'])} ago)"]
    if server["action"] == "shutdown":
        lines.append(f"  shutting down now: {server['reason']}")
    elif server["shutdown_at"]:
        lines.append(
            f"  shuts down at {server['shutdown_at']} (in {_seconds(server['seconds_to_shutdown'])}),"
            f" rule {server['rule']}: {server['reason']}"
        )
    else:
        lines.append(f"  no shutdown planned: {server['reason']}")
    if server["warning"]:
        lines.append(f"  WARNING in force: shutdown at {server['warning']['shutdown_at']}")
    if doc["keepalive"]:
        lines.append(f"  keep-alive until {doc['keepalive']['until']}")
    for kernel in doc["kernels"]:
        when = f", culled at {kernel['cull_at']}" if kernel["cull_at"] else ""
        lines.append(
            f"  kernel {kernel['id'][:8]} {kernel['name']} {kernel['execution_state']}, "
            f"{kernel['connections']} connection(s): {kernel['reason']}{when}"
        )
    for terminal in doc["terminals"]:
        when = f", culled at {terminal['cull_at']}" if terminal["cull_at"] else ""
        lines.append(f"  terminal {terminal['name']}: {terminal['reason']}{when}")
    for source in doc.get("sources", []):
        reason = source["reason"]
        lines.append(
            f"  {reason}" if reason.startswith(source["kind"]) else f"  {source['kind']} {reason}"
        )
    hub = doc["hub"]
    if hub["enabled"]:
        error = f", last error: {hub['last_error']}" if hub["last_error"] else ""
        lines.append(f"  hub: last report {hub['last_report'] or 'none yet'}{error}")
    else:
        lines.append(f"  hub: {hub['note']}")
    return "\n".join(lines)


def _servers(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.url:
        return [(args.url, args.token or "")]
    from jupyter_server.serverapp import list_running_servers

    return [(info["url"], info.get("token", "")) for info in list_running_servers()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jupyter idle", description="Explain what jupyter_idle_ext will do and why."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="print the idle status of running servers")
    status.add_argument("--url", help="a server's URL (default: every running server)")
    status.add_argument("--token", help="the server's token (with --url)")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    args = parser.parse_args(argv)

    servers = _servers(args)
    if not servers:
        print("No running Jupyter servers found.", file=sys.stderr)
        return 1
    failed = 0
    for url, token in servers:
        try:
            doc = fetch_status(url, token)
        except urllib.error.HTTPError as e:
            print(f"{url}: HTTP {e.code} (is jupyter_idle_ext enabled there?)", file=sys.stderr)
            failed += 1
            continue
        except OSError as e:
            print(f"{url}: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(f"Server {url}")
            print(explain(doc))
    return 1 if failed == len(servers) else 0


if __name__ == "__main__":
    sys.exit(main())
