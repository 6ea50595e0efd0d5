"""``jupyter server`` with a failure injected into one stage of jupyter_idle_ext, for the tests
that prove a failure at any stage stops the server (test_fail_closed.py).

    IDLE_TEST_FAIL_AT=link|load|start python faulty_server.py [jupyter server arguments]
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jupyter_idle_ext.app as app

STAGE = os.environ["IDLE_TEST_FAIL_AT"]


def fail(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(f"injected failure at {STAGE}")


if STAGE == "link":
    app.IdleExtension.policy_config = fail  # type: ignore[method-assign]
elif STAGE == "load":
    app.IdleExtension.initialize_settings = fail  # type: ignore[method-assign]
elif STAGE == "start":
    app.start_sources = fail  # type: ignore[assignment]
else:
    sys.exit(f"unknown stage {STAGE!r}")

if __name__ == "__main__":
    from jupyter_server.serverapp import main

    sys.exit(main())
