"""jupyter_server's own tests, with jupyter_idle_ext loaded and started in every server under test.

An extension installed into every user server must not change what jupyter_server promises. This
takes the tests from the sdist of the installed jupyter_server (kernels, sessions, contents,
events, the REST API, terminals, the server app), runs them with the extension (``plugin.py``
injects it), runs each test that failed again both ways, and fails when a test fails only with
the extension, twice: so that upstream's own failures and flakiness do not fail the build. The
tests the suite holds are collected without the extension, so a test the extension kept from
running fails it too.

    python tests/upstream/run.py              # what scripts/test.sh runs
    python tests/upstream/run.py -k cull      # a subset (arguments go to both pytest runs)

The sdist is downloaded once into ``.venv/upstream/`` (PyPI is one of the reachable registries).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / ".venv" / "upstream"

# the parts of jupyter_server's suite that an idle culler could disturb
SUITES = [
    "tests/services/kernels",
    "tests/services/sessions",
    "tests/services/contents",
    "tests/services/events",
    "tests/services/api",
    "tests/test_terminal.py",
    "tests/test_serverapp.py",
]
# a whole run takes about a minute here; a hang must not hold CI for long
RUN_TIMEOUT = 900
# the tests mostly wait (on kernels, on servers): four workers on two cores took 138 s here where
# two took 159 s; what runs again is a handful of tests, each way with one worker
WORKERS = 4


def upstream_tests(version: str) -> Path:
    """The sdist's tests and pytest configuration for this version, downloaded once."""
    target = CACHE / f"jupyter_server-{version}"
    if (target / "tests").is_dir():
        return target
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"jupyter_server=={version}",
                "--dest",
                download,
            ],
            check=True,
        )
        (sdist,) = Path(download).glob("jupyter_server-*.tar.gz")
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        prefix = f"jupyter_server-{version}/"
        with tarfile.open(sdist) as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix + "tests/") or m.name == prefix + "pyproject.toml"
            ]
            for member in members:
                member.name = member.name[len(prefix) :]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(partial, members=members, **safe)  # type: ignore[arg-type]
        # only the tests and their configuration: never the sdist's copy of the package, which
        # would shadow the installed one
        partial.rename(target)
    return target


def run_suite(
    source: Path, enabled: bool, selection: list[str], label: str, workers: int = 1
) -> dict[str, str]:
    """Run the suite in a scratch copy; returns each test's outcome by node id."""
    work = Path(tempfile.mkdtemp(prefix=f"upstream-{'with' if enabled else 'without'}-"))
    shutil.copytree(source / "tests", work / "tests")
    shutil.copy(source / "pyproject.toml", work / "pyproject.toml")
    report = work / "report"
    env = {
        **os.environ,
        "IDLE_EXT_UPSTREAM": "1" if enabled else "0",
        "IDLE_EXT_UPSTREAM_REPORT": str(report),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    # a developer's own JUPYTER_IDLE_* settings must not change the extension under test
    for name in list(env):
        if name.startswith("JUPYTER_IDLE_"):
            del env[name]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "--color=no",
        "--durations=0",
        "-n",
        str(workers),
        *selection,
    ]
    started = time.monotonic()
    log = work / "pytest.log"
    with open(log, "w") as out:
        subprocess.run(
            cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT
        )
    took = time.monotonic() - started
    outcomes: dict[str, str] = {}
    servers = 0
    for part in work.glob("report.*.json"):
        result = json.loads(part.read_text())
        outcomes.update(result["outcomes"])
        servers += result["servers_started"]
    if not outcomes:
        sys.exit(f"{label}: pytest produced no results; its output:\n{log.read_text()[-5000:]}")
    if enabled and servers == 0:
        sys.exit(f"{label}: jupyter_idle_ext was started in no server; see {log}")
    counts = {o: list(outcomes.values()).count(o) for o in sorted(set(outcomes.values()))}
    print(f"  {label}: {counts} in {took:.0f} s; extension started in {servers} servers")
    if "failed" in counts:
        print(f"    its log: {log}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return outcomes


def both_ways(
    source: Path, selection: list[str], again: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Both runs side by side (of the few tests that failed): they mostly wait on kernels."""
    with ThreadPoolExecutor(2) as pool:
        without = pool.submit(run_suite, source, False, selection, f"{again}without the extension")
        with_ext = pool.submit(run_suite, source, True, selection, f"{again}with the extension")
        return without.result(), with_ext.result()


def collected(source: Path, selection: list[str]) -> set[str]:
    """The node ids of the tests the suite holds, collected without the extension."""
    work = Path(tempfile.mkdtemp(prefix="upstream-collect-"))
    shutil.copytree(source / "tests", work / "tests")
    shutil.copy(source / "pyproject.toml", work / "pyproject.toml")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q"]
    proc = subprocess.run(
        [*cmd, *selection], cwd=work, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    shutil.rmtree(work, ignore_errors=True)
    ids = {line.strip() for line in proc.stdout.splitlines() if "::" in line}
    if not ids:
        sys.exit(f"collecting the upstream tests found none; its output:\n{proc.stdout[-5000:]}")
    return ids


def main() -> int:
    version = importlib.metadata.version("jupyter_server")
    source = upstream_tests(version)
    selection = [*SUITES, *sys.argv[1:]]
    print(f"jupyter_server {version}'s own tests ({', '.join(SUITES)}):")
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(collected, source, selection)
        first = pool.submit(run_suite, source, True, selection, "with the extension", WORKERS)
        everything, with_ext = held.result(), first.result()

    failed = sorted(node for node, outcome in with_ext.items() if outcome == "failed")
    suspects: list[str] = []
    if failed:
        # a test that fails with the extension, again, and passes without it is ours
        print(f"  {len(failed)} failed with the extension; running them again both ways")
        again_without, again_with = both_ways(source, failed, "again ")
        suspects = [
            n for n in failed if again_with.get(n) == "failed" and again_without.get(n) == "passed"
        ]
    missing = sorted(everything - set(with_ext))
    passed = sum(1 for outcome in with_ext.values() if outcome == "passed")
    print(
        f"  {len(everything)} upstream tests: {passed} pass with the extension; "
        f"{len(suspects)} fail only with it"
    )
    if missing:
        print(f"  not run with the extension: {missing}")
    for node in suspects:
        print(f"  FAILS ONLY WITH jupyter_idle_ext: {node}")
    return 1 if suspects or missing else 0


if __name__ == "__main__":
    sys.exit(main())
