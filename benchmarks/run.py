"""Run every benchmark, print the table and write benchmarks/RESULTS.md.

    python benchmarks/run.py                  # the full suite (about 20 minutes): RESULTS.md
                                              # and results.json
    python benchmarks/run.py --quick          # seconds per benchmark, small counts, writes nothing
    python benchmarks/run.py --only roundtrip footprint
    python benchmarks/run.py --quick --output /tmp/r.md --json /tmp/r.json

jupyter_idle_ext (A) and the setup it is compared with (B) run side by side or alternate within
the run (A B A B ...); the table gives medians and ratios. Only a full run of every benchmark
writes benchmarks/RESULTS.md; everything in it is measured during that run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import psutil

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_apps import writing_and_apps  # noqa: E402
from bench_culling import cull_lateness, shutdown_lateness  # noqa: E402
from bench_footprint import footprint, loop_scale  # noqa: E402
from bench_gateway import gateway_round_trip  # noqa: E402
from bench_hub import hub_posts, hub_scale  # noqa: E402
from bench_hubstatus import hub_status_scale  # noqa: E402
from bench_kernels import output_flood, round_trip  # noqa: E402
from bench_processes import process_scan  # noqa: E402
from harness import Context, Row, machine  # noqa: E402

#: name on the command line -> (title, function)
BENCHMARKS: dict[str, tuple[str, Callable[[Context], list[Row]]]] = {
    "roundtrip": ("1. Execute round trip", round_trip),
    "flood": ("2. Output flood", output_flood),
    "cull": ("3. Cull lateness", cull_lateness),
    "shutdown": ("4. Shutdown lateness", shutdown_lateness),
    "hubposts": ("5. Hub posts", hub_posts),
    "hubscale": ("6. Hub load at scale", hub_scale),
    "footprint": ("7. Footprint", footprint),
    "loop": ("8. Scale of the loop", loop_scale),
    "processes": ("9. Processes", process_scan),
    "apps": ("10. Documents and proxied apps", writing_and_apps),
    "gateway": ("11. Kernels the server does not run", gateway_round_trip),
    "hubstatus": ("12. hub-status at scale", hub_status_scale),
}

RESULTS = HERE / "RESULTS.md"
RESULTS_JSON = HERE / "results.json"
COMMAND = "python benchmarks/run.py"


def clean_environment() -> None:
    """Servers must run on the options each benchmark gives, not on the caller's environment."""
    for name in list(os.environ):
        if name.startswith(("JUPYTER_IDLE_", "JUPYTERHUB_", "JPY_")):
            del os.environ[name]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | measure | jupyter_idle_ext | compared with | that setup | ratio [95 % "
        "interval] | goal | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row.bench,
            row.measure,
            row.ours,
            row.compared,
            row.baseline,
            row.ratio,
            row.goal,
            row.verdict,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    met = sum(r.verdict == "met" for r in rows)
    missed = sum(r.verdict.startswith("missed") or r.verdict == "error" for r in rows)
    unresolved = sum(r.verdict.startswith("unresolved") for r in rows)
    return f"Goals met: {met}; missed: {missed}; unresolved: {unresolved}."


def load_sentence(info: dict[str, Any]) -> str:
    cores = info["cores"] or 1
    busy = info["cpu_busy_start"]
    before = (
        f"{busy:.0f} % of the CPU was in use by other processes in the 3 s before the run "
        f"started anything (load average {info['load_start'][0]:.2f} on {cores} cores)"
    )
    after = ""
    if "cpu_busy_end" in info:
        after = f"; {info['cpu_busy_end']:.0f} % in the 3 s after it had stopped everything"
    if busy < 10 and info.get("cpu_busy_end", 0) < 10:
        return f"The machine was otherwise idle: {before}{after}."
    return (
        f"The machine was NOT otherwise idle: {before}{after}. Other work competes for the "
        "same cores, so absolute figures and small ratios are noisier than on an idle machine "
        "(the A/A ratios show by how much)."
    )


def machine_table(info: dict[str, Any]) -> str:
    rows = [
        ("date", info["date"]),
        ("CPU", f"{info['cpu']}, {info['cores']} cores"),
        ("RAM", f"{info['ram_gib']} GiB"),
        ("OS", info["os"]),
        ("Python", info["python"]),
        ("jupyter_server", info["jupyter_server"]),
        ("jupyterhub", info["jupyterhub"]),
        ("ipykernel", info["ipykernel"]),
        ("jupyter_client", info["jupyter_client"]),
        ("tornado", info["tornado"]),
        ("jupyter_idle_ext", info["jupyter_idle_ext"]),
        ("load average (1, 5, 15 min) at start", ", ".join(f"{v:.2f}" for v in info["load_start"])),
        (
            "load average at end (includes this run)",
            ", ".join(f"{v:.2f}" for v in info.get("load_end", ())),
        ),
        (
            "CPU in use by others before / after the run",
            f"{info['cpu_busy_start']:.0f} % / {info.get('cpu_busy_end', math.nan):.0f} %",
        ),
        ("run time", f"{info.get('duration_s', math.nan):.0f} s"),
    ]
    return "\n".join(["| | |", "|---|---|", *[f"| {k} | {_cell(str(v))} |" for k, v in rows]])


def report(
    rows: list[Row], info: dict[str, Any], ctx: Context, timings: dict[str, float], quick: bool
) -> str:
    missed = [
        r for r in rows if r.verdict.startswith(("missed", "unresolved")) or r.verdict == "error"
    ]
    parts = [
        "# Benchmarks: jupyter_idle_ext against jupyter_server's built-ins and "
        "jupyterhub-singleuser",
        "",
        f"Generated by `{COMMAND}{' --quick' if quick else ''}` on {info['date']} in "
        f"{info['duration_s']:.0f} s. Every figure below was measured in that run; run the "
        "command again to refresh this file (do not edit it by hand).",
        "",
        "## Machine",
        "",
        machine_table(info),
        "",
        load_sentence(info),
        "",
        "## Results",
        "",
        'A = jupyter_idle_ext, B = the setup named in "compared with"; ratio = A / B of the '
        'medians. A and B ran side by side or alternated within the run. "A/A" is the ratio '
        "of a second server without the extension to the first, measured alongside: how far "
        "two identical setups differed on this machine in this run. Each figure in brackets "
        "is a bootstrap 95 % interval (2,000 resamples of the run's samples). A goal is "
        '"met" only when the whole interval is within it, "missed" only when the whole '
        'interval is beyond it (and beyond the A/A\'s), and otherwise "unresolved", with '
        "the number of samples that would resolve it at the spread seen.",
        "",
        table(rows),
        "",
        summary(rows),
        "",
    ]
    for title, _ in BENCHMARKS.values():
        notes = ctx.notes.get(title)
        if not notes:
            continue
        took = timings.get(title)
        parts += [f"### {title}" + (f" ({took:.0f} s)" if took is not None else ""), ""]
        parts += [f"- {n}" for n in notes]
        parts.append("")
    hub_note = ctx.notes.get("10,000 users")
    if hub_note:
        parts += ["## What this means for a 10,000-user hub", "", *hub_note, ""]
    parts += ["## Closing note", ""]
    if missed:
        parts += ["Goals missed or unresolved in this run, and what limits them:", ""]
        for title, _ in BENCHMARKS.values():
            bench_missed = [r for r in missed if r.bench == title]
            if not bench_missed:
                continue
            what = "; ".join(
                f"{r.measure}: {r.ours}"
                + (f" against {r.baseline}, ratio {r.ratio}" if r.ratio else "")
                + f" (goal: {r.goal})"
                for r in bench_missed
            )
            parts.append(f"- **{title}**: {what}.")
            for limit in ctx.notes.get(f"limit:{title}", ["see the notes above"]):
                parts.append(f"  - {limit}")
    else:
        parts.append("Every goal was met in this run.")
    parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: seconds, not minutes")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--output", type=Path, help="write the report here (Markdown)")
    parser.add_argument("--json", type=Path, help="write the rows and the machine as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs)")
    args = parser.parse_args(argv)
    clean_environment()

    names = args.only or list(BENCHMARKS)
    output = args.output
    if output is None and not args.quick and not args.only:
        output = RESULTS
    tmp = Path(tempfile.mkdtemp(prefix="jupyter-idle-bench-"))
    ctx = Context(quick=args.quick, tmp=tmp, log=lambda text: print(text, flush=True))
    info = machine()
    start = time.monotonic()
    print(
        f"{'Quick' if args.quick else 'Full'} run of {', '.join(names)}; machine: {info['cpu']}, "
        f"{info['cores']} cores, {info['cpu_busy_start']:.0f} % CPU busy before; scratch {tmp}",
        flush=True,
    )
    rows: list[Row] = []
    timings: dict[str, float] = {}
    errors = 0
    for name in names:
        title, function = BENCHMARKS[name]
        print(f"\n== {title}", flush=True)
        began = time.monotonic()
        try:
            new_rows = function(ctx)
        except Exception as e:
            errors += 1
            traceback.print_exc()
            new_rows = [
                Row(title, "the benchmark failed", f"error: {type(e).__name__}: {e}", "", "")
            ]
            new_rows[0].verdict = "error"
            ctx.note(f"limit:{title}", f"the benchmark failed: {type(e).__name__}: {e}")
        timings[title] = time.monotonic() - began
        for row in new_rows:
            print(f"  {row.measure}: {row.ours} vs {row.baseline} [{row.verdict}]", flush=True)
        rows += new_rows
        print(f"  ({timings[title]:.0f} s)", flush=True)
    info["duration_s"] = time.monotonic() - start
    info["load_end"] = os.getloadavg()
    info["cpu_busy_end"] = psutil.cpu_percent(interval=3)

    text = report(rows, info, ctx, timings, args.quick)
    print("\n" + table(rows))
    print(f"\n{load_sentence(info)}\nTotal: {info['duration_s']:.0f} s")
    if output is not None:
        output.write_text(text)
        print(f"Wrote {output}")
    if output == RESULTS:
        # a full run: its machine-readable results too
        args.json = args.json or RESULTS_JSON
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "timings": timings,
                    "rows": [row.__dict__ for row in rows],
                    "notes": ctx.notes,
                },
                indent=1,
                default=str,
            )
        )
    if args.keep:
        print(f"Scratch kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
