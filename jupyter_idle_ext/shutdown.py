"""Ending the process after an idle shutdown: promptly, with code 0, whatever holds it up.

``ServerApp.stop()`` shuts kernels and extensions down and stops the event loop; the process
should then exit. Two things can keep it alive, and a server left running costs as much as one
never stopped: a websocket or an extension that never finishes stopping (bounded by
``shutdown_grace``), and a non-daemon thread some library left behind, such as AnyIO's worker
threads that jupyter_server_ydoc uses, which Python waits for at exit although the loop that fed
them is gone. Once the loop has stopped, every cleanup that can still run has run, so the process
exits a moment later.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

# after the event loop stops, a normal exit takes well under this
AFTER_STOP = 2.0
# how long a process started after the stop began gets to end after SIGTERM before it is killed
LATE_STOP_TIMEOUT = 3.0


async def stop_server(serverapp: Any, reporter: Any, log: Any) -> None:
    """Stop the whole server the way Ctrl-C would: kernels, terminals, extensions, loop.

    Under a Hub that lets the server stop itself, ask the Hub first, so it records the stop at
    once instead of at its next poll; the Hub then stops us with a signal, which jupyter_server
    handles, and that is the stop."""
    if reporter is not None:
        await reporter.stop_server()
    # from here a SIGTERM or Ctrl-C would only race the cleanup under way, or kill the process
    # with -15 while it exits; exit_promptly bounds the exit anyway
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):  # ValueError: not the main thread
            signal.signal(sig, signal.SIG_IGN)
    serverapp.stop()


def held_by() -> list[str]:
    """What may hold the exit up: the non-daemon threads, and the processes this one started
    that still run (a job's kernel, a process a kernel left behind)."""
    held = [f"thread {t.name}" for t in threading.enumerate() if not t.daemon and t.is_alive()]
    with contextlib.suppress(Exception):
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                command = " ".join(child.cmdline()) or child.name()
                held.append(f"process {child.pid} `{command[:80]}`")
    return held


def running_processes() -> set[tuple[int, float]]:
    """The processes this one started itself that run now, as (pid, start time)."""
    try:
        import psutil

        found = set()
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                found.add((child.pid, child.create_time()))
        return found
    except Exception:
        return set()


def end_processes(processes: list[Any], timeout: float) -> list[Any]:
    """Terminate ``processes`` (psutil), kill those still running ``timeout`` seconds later;
    return those."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    return list(alive)


def end_late_processes(before: set[tuple[int, float]], log: Any) -> list[int]:
    """End the processes this one started itself after the stop began (its direct children not
    in ``before``, what ran then), each with its own children; return their pids. Such a process
    (the executor of a notebook job created as the stop came, which the jobs source, already
    stopped, never saw) would run on after the server, where nobody can see or stop it. What ran
    before the stop, and what those processes start, is left as it is."""
    try:
        import psutil

        late = []
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if (child.pid, child.create_time()) not in before:
                    command = " ".join(child.cmdline()) or child.name()
                    log.warning(
                        "Ending process %d `%s`: it started after the stop began.",
                        child.pid,
                        command[:80],
                    )
                    late.append(child)
                    late += child.children(recursive=True)
        end_processes(late, LATE_STOP_TIMEOUT)
        return [p.pid for p in late]
    except Exception as e:  # the exit goes on whatever happens here
        log.error("Could not end the processes started after the stop began: %s", e)
        return []


def _flush_and_exit(
    log: Any, why: str, code: int = 0, before: set[tuple[int, float]] | None = None
) -> None:
    if before is not None:
        end_late_processes(before, log)
    log.warning("Exiting: %s (still running: %s).", why, ", ".join(held_by()) or "nothing")
    for handler in logging.getLogger().handlers + list(getattr(log, "handlers", [])):
        try:
            handler.flush()
        except Exception:
            continue
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            continue
    os._exit(code)


def exit_with(code: int, log: Any) -> None:
    """Make the process's exit code ``code`` however it ends (a normal exit would be 0)."""
    atexit.register(lambda: _flush_and_exit(log, f"exit code {code}", code))


def exit_promptly(loop: asyncio.AbstractEventLoop, grace: float, log: Any, code: int = 0) -> None:
    """Make sure the process exits with ``code``: ``AFTER_STOP`` after the loop stops, or
    ``grace`` from now; what it started after now is ended first (``end_late_processes``)."""
    before = running_processes()
    # a normal exit, before the watch below ends it
    atexit.register(lambda: end_late_processes(before, log))

    def watch() -> None:
        deadline = time.monotonic() + grace
        while loop.is_running():
            if time.monotonic() >= deadline:
                why = f"the stop did not finish within shutdown_grace ({grace:g} s)"
                _flush_and_exit(log, why, code, before=before)
            time.sleep(0.1)
        stopped = time.monotonic()
        while time.monotonic() - stopped < AFTER_STOP:
            time.sleep(0.1)
        _flush_and_exit(log, "the server stopped but the process did not end", code, before=before)

    # a daemon thread: when the process ends by itself, as it usually does, this ends with it
    threading.Thread(target=watch, name="jupyter_idle_ext exit", daemon=True).start()
