"""A CPU-bound job for the process tests: a busy loop for SECONDS, then DONE_FILE is written.

python burn.py SECONDS [DONE_FILE]           # in the main thread
python burn.py SECONDS DONE_FILE --idle       # sleeps instead: a process that does not work
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


if __name__ == "__main__":
    seconds = float(sys.argv[1])
    if "--idle" in sys.argv:
        time.sleep(seconds)
    else:
        burn(seconds)
    if len(sys.argv) > 2 and not sys.argv[2].startswith("--"):
        Path(sys.argv[2]).write_text(str(time.time()))
