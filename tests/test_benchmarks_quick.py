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
from typing import Any

import pytest

from jupyter_idle_ext.pytest_plugin import find_chp, on_ci

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
HUB_BENCHMARKS = {"5. Hub posts", "6. Hub load at scale"}

# CPU-heavy for minutes: it would skew the timing of tests running beside it, so scripts/test.sh
# runs it once the main suite is over, beside jupyter_server's own suite only
pytestmark = [pytest.mark.timeout(900), pytest.mark.heavy]


def _registry() -> dict[str, tuple[str, Any]]:
    """The benchmarks run.py knows, by name: (title, function)."""
    spec = importlib.util.spec_from_file_location("benchmarks_run", BENCHMARKS / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.BENCHMARKS)


def _titles() -> list[str]:
    return [title for title, _ in _registry().values()]


def _names() -> list[str]:
    return list(_registry())


# Two runs of run.py side by side, each with half the benchmarks (about equal in time, from a
# quick run's timings: 3 minutes each instead of 5 in one): quick numbers are noise either way,
# and the two Hub benchmarks share a half, so two Hubs never run at once
HALVES = (
    ["flood", "hubposts", "hubscale", "footprint"],
    ["hubstatus", "apps", "processes", "cull", "gateway", "roundtrip", "shutdown", "loop"],
)


def test_quick_mode_runs_every_benchmark_and_writes_nothing_in_the_repo(tmp_path: Path) -> None:
    committed = [BENCHMARKS / "RESULTS.md", BENCHMARKS / "results.json", ROOT / "README.md"]
    before = [path.read_bytes() if path.exists() else None for path in committed]
    runs = []
    for i, names in enumerate(HALVES):
        report, data, out = (
            tmp_path / f"{name}.{i}" for name in ("RESULTS.md", "results.json", "out")
        )
        command = [sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--only", *names]
        command += ["--output", str(report), "--json", str(data)]
        with open(out, "w") as stdout:
            proc = subprocess.Popen(
                command, cwd=tmp_path, stdout=stdout, stderr=subprocess.STDOUT, text=True
            )
        runs.append((proc, report, data, out))
    try:
        for proc, *_ in runs:
            proc.wait(timeout=850)
    finally:
        for proc, *_ in runs:
            proc.kill()
    outputs = [out.read_text() for *_, out in runs]
    for (proc, *_), output in zip(runs, outputs):
        assert proc.returncode == 0, output[-8000:]
    rows = [row for _, _, data, _ in runs for row in json.loads(data.read_text())["rows"]]
    titles = _titles()
    assert len(titles) == 12
    assert sorted(name for half in HALVES for name in half) == sorted(_names()), "one half each"
    assert {row["bench"] for row in rows} == set(titles), [o[-4000:] for o in outputs]

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

    for _, report, data, out in runs:
        machine = json.loads(data.read_text())["machine"]
        for key in (
            "cpu",
            "cores",
            "ram_gib",
            "python",
            "jupyter_server",
            "jupyterhub",
            "ipykernel",
        ):
            assert machine[key], key
        text = report.read_text()
        assert "## Machine" in text and "| benchmark | measure |" in text
        assert "run.py --quick" in text
        assert "| benchmark | measure |" in out.read_text()
    texts = "".join(report.read_text() for _, report, _, _ in runs)
    for title in titles:
        assert f"| {title} |" in texts, title

    # quick mode never touches the committed results, nor the README
    after = [path.read_bytes() if path.exists() else None for path in committed]
    assert after == before
