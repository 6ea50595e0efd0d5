"""The benchmark suite's quick mode runs end to end, so the benchmarks cannot rot.

Quick numbers are noise: this checks that every benchmark still runs against real servers, real
kernels and a real JupyterHub and reports its rows, not that the goals are met (a full run writes
benchmarks/RESULTS.md, which says that).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_idle_ext.pytest_plugin import find_chp, on_ci

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
HUB_BENCHMARKS = {"5. Hub posts", "6. Hub load at scale"}

# CPU-heavy for minutes: it would skew the timing of tests running beside it
pytestmark = [pytest.mark.timeout(900), pytest.mark.serial]


def _titles() -> list[str]:
    """The benchmarks run.py knows, read from its registry."""
    spec = importlib.util.spec_from_file_location("benchmarks_run", BENCHMARKS / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [title for title, _ in module.BENCHMARKS.values()]


def test_quick_mode_runs_every_benchmark_and_writes_nothing_in_the_repo(tmp_path: Path) -> None:
    committed = [BENCHMARKS / "RESULTS.md", BENCHMARKS / "results.json", ROOT / "README.md"]
    before = [path.read_bytes() if path.exists() else None for path in committed]
    report, data = tmp_path / "RESULTS.md", tmp_path / "results.json"

    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "run.py"),
            "--quick",
            "--output",
            str(report),
            "--json",
            str(data),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]

    results = json.loads(data.read_text())
    rows = results["rows"]
    titles = _titles()
    assert len(titles) == 12
    assert {row["bench"] for row in rows} == set(titles), proc.stdout[-4000:]

    chp_missing = find_chp() is None
    if chp_missing and on_ci():
        pytest.fail("configurable-http-proxy is missing: the Hub benchmarks cannot run")
    for row in rows:
        assert row["verdict"] != "error", row
        if row["verdict"] == "skipped":
            assert chp_missing and row["bench"] in HUB_BENCHMARKS, row
            continue
        # every row with a goal has a verdict from its interval
        if row["goal"]:
            assert row["verdict"] in ("met", "missed") or row["verdict"].startswith(
                "unresolved ("
            ), row
        else:
            assert row["verdict"] == "info", row
        # a measured figure, not a placeholder
        assert row["ours"] and not row["ours"].startswith("n/a"), row
        assert row["values"], row
        # ratios come with their 95 % interval (and the A/A's where there is one)
        if row["ratio"] and "ratio <=" in row["goal"]:
            assert re.match(r"^[\d.]+ \[[\d.]+, [\d.]+\]", row["ratio"]), row

    # the comparisons really ran: the compared setup has a figure where it was run
    compared = {row["bench"] for row in rows if row["baseline"] and row["ratio"]}
    assert {"1. Execute round trip", "2. Output flood", "3. Cull lateness"} <= compared
    assert {"7. Footprint", "10. Documents and proxied apps"} <= compared
    assert "11. Kernels the server does not run" in compared
    aa = {row["bench"] for row in rows if "(A/A " in row["ratio"]}
    assert {"1. Execute round trip", "2. Output flood", "7. Footprint"} <= aa
    # shutdown lateness has its stop-cost control
    assert any("ours minus the control" in row["measure"] for row in rows)

    machine = results["machine"]
    for key in ("cpu", "cores", "ram_gib", "python", "jupyter_server", "jupyterhub", "ipykernel"):
        assert machine[key], key
    text = report.read_text()
    assert "## Machine" in text and "| benchmark | measure |" in text
    assert "run.py --quick" in text
    for title in titles:
        assert f"| {title} |" in text, title
    assert "| benchmark | measure |" in proc.stdout

    # quick mode never touches the committed results, nor the README
    after = [path.read_bytes() if path.exists() else None for path in committed]
    assert after == before
