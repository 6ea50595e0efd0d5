"""`jupyter idle`: the status endpoint explained in a terminal, "stop when done", and a hub-wide view.

    jupyter idle status [--url URL --token TOKEN] [--json]
    jupyter idle stop-when-done [--cancel] [--url URL --token TOKEN]
    jupyter idle hub-status [--hub-url URL --token TOKEN --public-url URL] [--json]
                            [--user U] [--group G] [--idle-over SECONDS] [--kept-by KIND]

``status`` and ``stop-when-done`` find the running servers of this user (as `jupyter server list`
does) or take ``--url`` and ``--token``. ``hub-status`` lists every running server of every user
of a JupyterHub (named servers too), read through the proxy from each server's ``api/idle`` with
an admin token (``$JUPYTERHUB_API_URL`` and ``$JUPYTERHUB_API_TOKEN`` as a Hub service gets them).
Reading a status is never activity.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# scopes hub-status needs, for the error message and the README's role
HUB_SCOPES = ["list:users", "read:users", "read:servers", "access:servers", "read:groups"]


def _request(
    method: str, url: str, token: str, body: bytes | None = None, timeout: float = 10
) -> Any:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"token {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


def fetch_status(url: str, token: str, timeout: float = 10) -> dict[str, Any]:
    return dict(_request("GET", url.rstrip("/") + "/api/idle", token, timeout=timeout))


def duration(value: float | None) -> str:
    """Seconds as a person says them: "45 s", "12 min", "2 h 03 min"."""
    if value is None:
        return "-"
    seconds = round(float(value))
    if seconds < 120:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def explain(doc: dict[str, Any]) -> str:
    """The status document as lines a person reads."""
    server = doc["server"]
    lines = [f"  last activity {doc['last_activity']} ({duration(doc['idle_seconds'])} ago)"]
    if server["action"] == "shutdown":
        lines.append(f"  shutting down now: {server['reason']}")
    elif server["shutdown_at"]:
        lines.append(
            f"  shuts down at {server['shutdown_at']} (in {duration(server['seconds_to_shutdown'])}),"
            f" rule {server['rule']}: {server['reason']}"
        )
    else:
        lines.append(f"  no shutdown planned: {server['reason']}")
    if server["warning"]:
        lines.append(f"  WARNING in force: shutdown at {server['warning']['shutdown_at']}")
    if doc["keepalive"]:
        lines.append(f"  keep-alive until {doc['keepalive']['until']}")
    if doc.get("stop_when_done"):
        lines.append(f"  stop when done, asked at {doc['stop_when_done']['since']}")
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


def keeps(doc: dict[str, Any]) -> str:
    """What keeps a server (the policy's own pick, ``server.kept_by``), or when it stops, in a
    few words: "kernel busy 3 h 00 min", "process `python train.py` working 12 min", "idle 48
    min, stops in 12 min"."""
    server = doc["server"]
    if server["action"] == "shutdown":
        return "shutting down now"
    kept_by = server.get("kept_by")
    if server["rule"] is None and kept_by:
        return f"{kept_by['what']} {duration(kept_by['busy_seconds'])}"
    if server["rule"] is None:
        return str(server["reason"])
    if server["rule"] == "keepalive" and doc.get("keepalive"):
        return f"keep-alive until {doc['keepalive']['until']}"
    when = f"stops in {duration(server['seconds_to_shutdown'])}"
    if server["rule"] == "stop_when_done":
        return f"stop when done: nothing works, {when}"
    if server["rule"] == "max_server_age":
        return f"{when} (max_server_age)"
    return f"idle {duration(doc['idle_seconds'])}, {when}"


# -- status and stop-when-done --------------------------------------------------------------


def _servers(args: argparse.Namespace) -> list[tuple[str, str]]:
    if args.url:
        return [(args.url, args.token or "")]
    from jupyter_server.serverapp import list_running_servers

    return [(info["url"], info.get("token", "")) for info in list_running_servers()]


def _each_server(args: argparse.Namespace, act: Any) -> int:
    servers = _servers(args)
    if not servers:
        print("No running Jupyter servers found.", file=sys.stderr)
        return 1
    failed = 0
    for url, token in servers:
        try:
            act(url, token)
        except urllib.error.HTTPError as e:
            print(f"{url}: HTTP {e.code} (is jupyter_idle_ext enabled there?)", file=sys.stderr)
            failed += 1
        except OSError as e:
            print(f"{url}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed == len(servers) else 0


def status(args: argparse.Namespace) -> int:
    def show(url: str, token: str) -> None:
        doc = fetch_status(url, token)
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print(f"Server {url}")
            print(explain(doc))

    return _each_server(args, show)


def stop_when_done(args: argparse.Namespace) -> int:
    def ask(url: str, token: str) -> None:
        endpoint = url.rstrip("/") + "/api/idle/stop-when-done"
        if args.cancel:
            answer = _request("DELETE", endpoint, token)
            said = "cancelled" if answer["cancelled"] else "was not asked for"
            print(f"{url}: stop when done {said}")
        else:
            answer = _request("POST", endpoint, token, b"{}")["stop_when_done"]
            print(
                f"{url}: stops {answer['delay']:g} s after nothing works any more "
                f"(asked at {answer['since']})"
            )

    return _each_server(args, ask)


# -- hub-status -----------------------------------------------------------------------------


PAGINATION = "application/jupyterhub-pagination+json"


def hub_users(hub_url: str, token: str) -> list[dict[str, Any]]:
    """Every user with a server ready, following the Hub's pages (``api_page_max_limit``, 200
    by default: a Hub with more users answers one page at a time)."""
    users: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        url = f"{hub_url.rstrip('/')}/users?state=ready&offset={offset}"
        request = urllib.request.Request(url)
        request.add_header("Authorization", f"token {token}")
        request.add_header("Accept", PAGINATION)
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.loads(response.read())
        if isinstance(page, list):  # a Hub older than pagination: everything at once
            return page
        users += page.get("items", [])
        following = (page.get("_pagination") or {}).get("next")
        offset = following.get("offset") if following else None
    return users


def group_members(hub_url: str, token: str, group: str) -> set[str]:
    quoted = urllib.parse.quote(group)
    return set(_request("GET", f"{hub_url.rstrip('/')}/groups/{quoted}", token)["users"])


class Progress:
    """ "read 120/10000 servers" on a terminal's standard error, for long scans."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.on = total >= 20 and bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self) -> None:
        self.done += 1
        if self.on and (self.done % 10 == 0 or self.done == self.total):
            self.stream.write(f"\rread {self.done}/{self.total} servers")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


def hub_rows(
    hub_url: str,
    token: str,
    public_url: str,
    *,
    users: set[str] | None = None,
    workers: int = 100,
    timeout: float = 5,
) -> list[dict[str, Any]]:
    """One row per running server of every user (or of ``users``): what keeps it, and when it
    stops. Servers are read ``workers`` at a time, each within ``timeout``: a server that hangs
    costs its timeout once."""
    try:
        found = hub_users(hub_url, token)
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise SystemExit(
                f"The Hub refused to list its users (HTTP {e.code}): the token needs an admin "
                f"role with the scopes {', '.join(HUB_SCOPES)}."
            ) from None
        raise
    servers = [
        (user["name"], name, server)
        for user in found
        if users is None or user["name"] in users
        for name, server in (user.get("servers") or {}).items()
        if server.get("ready")
    ]
    progress = Progress(len(servers))

    def row(item: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
        try:
            return server_row(item, public_url, token, timeout)
        finally:
            progress.step()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(row, servers))


def server_row(
    item: tuple[str, str, dict[str, Any]], public_url: str, token: str, timeout: float
) -> dict[str, Any]:
    user, name, server = item
    url = public_url.rstrip("/") + server["url"]
    entry: dict[str, Any] = {
        "user": user,
        "server": name,
        "url": url,
        "hub_last_activity": server.get("last_activity"),
    }
    try:
        doc = fetch_status(url, token, timeout=timeout)
    except urllib.error.HTTPError as e:
        entry["state"] = (
            "no jupyter_idle_ext"
            if e.code == 404
            else f"refused (HTTP {e.code}): the token needs access:servers"
            if e.code in (401, 403)
            else f"HTTP {e.code}"
        )
        return entry
    except OSError as e:
        entry["state"] = f"not answering ({e})"
        return entry
    kept_by = doc["server"].get("kept_by") or {}
    entry.update(
        state="ok",
        last_activity=doc["last_activity"],
        idle_seconds=doc.get("idle_seconds"),
        kept_by=kept_by.get("what") or "idle",
        keeps=keeps(doc),
        shutdown_at=doc["server"]["shutdown_at"],
    )
    return entry


def wanted(row: dict[str, Any], idle_over: float | None, kept_by: str | None) -> bool:
    """Whether a row passes ``--idle-over`` and ``--kept-by`` (a server that did not answer
    passes neither: nothing is known of it)."""
    if idle_over is None and kept_by is None:
        return True
    if row.get("state") != "ok":
        return False
    if idle_over is not None and (row.get("idle_seconds") or 0) <= idle_over:
        return False
    return kept_by is None or kept_by.lower() in str(row.get("kept_by", "")).lower()


def hub_status(args: argparse.Namespace) -> int:
    hub_url = args.hub_url or os.environ.get("JUPYTERHUB_API_URL", "")
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not hub_url or not token:
        print(
            "hub-status needs the Hub's API URL and an admin token: --hub-url and --token, or "
            "$JUPYTERHUB_API_URL and $JUPYTERHUB_API_TOKEN.",
            file=sys.stderr,
        )
        return 2
    public_url = args.public_url or os.environ.get("JUPYTERHUB_PUBLIC_URL", "")
    if not public_url:
        # the Hub's API behind the same proxy as the servers: https://hub.example.org/hub/api
        parts = urllib.parse.urlsplit(hub_url)
        public_url = f"{parts.scheme}://{parts.netloc}"
    users: set[str] | None = set(args.user) if args.user else None
    for group in args.group or ():
        try:
            members = group_members(hub_url, token, group)
        except urllib.error.HTTPError as e:
            print(f"Cannot read the group {group!r} (HTTP {e.code}).", file=sys.stderr)
            return 2
        users = members if users is None else users & members
    rows = hub_rows(hub_url, token, public_url, users=users, workers=args.workers)
    rows = [r for r in rows if wanted(r, args.idle_over, args.kept_by)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No running servers.")
        return 0
    table = [("user", "server", "last activity", "what keeps it / when it stops", "shutdown at")]
    for r in rows:
        if r["state"] != "ok":
            table.append((r["user"], r["server"] or "(default)", "-", r["state"], "-"))
            continue
        table.append(
            (
                r["user"],
                r["server"] or "(default)",
                r["last_activity"] or "-",
                r["keeps"],
                r["shutdown_at"] or "-",
            )
        )
    widths = [max(len(str(line[i])) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jupyter idle", description="Explain what jupyter_idle_ext will do and why."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help in (
        ("status", "print the idle status of running servers"),
        ("stop-when-done", "stop the server shortly after nothing works any more"),
    ):
        command = sub.add_parser(name, help=help)
        command.add_argument("--url", help="a server's URL (default: every running server)")
        command.add_argument("--token", help="the server's token (with --url)")
        if name == "status":
            command.add_argument("--json", action="store_true", help="print the raw status JSON")
        else:
            command.add_argument("--cancel", action="store_true", help="cancel it")
    hub = sub.add_parser("hub-status", help="every running server of a JupyterHub, one row each")
    hub.add_argument("--hub-url", help="the Hub's API URL (default: $JUPYTERHUB_API_URL)")
    hub.add_argument("--token", help="an admin token (default: $JUPYTERHUB_API_TOKEN)")
    hub.add_argument(
        "--public-url",
        help="where the proxy serves the users' servers (default: $JUPYTERHUB_PUBLIC_URL, "
        "else the Hub API URL's scheme and host)",
    )
    hub.add_argument("--json", action="store_true", help="print the rows as JSON")
    hub.add_argument("--user", action="append", help="only this user's servers (repeatable)")
    hub.add_argument(
        "--group", action="append", help="only the servers of this group's members (repeatable)"
    )
    hub.add_argument(
        "--idle-over", type=float, metavar="SECONDS", help="only servers idle longer than this"
    )
    hub.add_argument(
        "--kept-by",
        metavar="KIND",
        help='only servers kept by this kind of work ("kernel", "process", "job", ...; '
        '"idle" for those nothing keeps)',
    )
    hub.add_argument("--workers", type=int, default=100, help="servers read at once (default: 100)")
    args = parser.parse_args(argv)
    if args.command == "status":
        return status(args)
    if args.command == "stop-when-done":
        return stop_when_done(args)
    return hub_status(args)


if __name__ == "__main__":
    sys.exit(main())
