"""The suite's fixtures and harness are the package's pytest plugin (jupyter_idle_ext/pytest_plugin.py),
on top of pytest-jupyter's in-process server."""

pytest_plugins = ["pytest_jupyter.jupyter_server", "jupyter_idle_ext.pytest_plugin"]
