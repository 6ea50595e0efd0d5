#!/usr/bin/env bash
# Watch the extension work: installs it as a user would (non-editable, so the shipped
# jupyter-config enables it) into .venv-demo, then starts JupyterLab with timeouts short enough
# to see every rule fire within a few minutes. Extra arguments go to Jupyter:
#
#     bash scripts/demo.sh
#     bash scripts/demo.sh --port=9999 --IdleExtension.cull_connected=False
#
# The demo has its own virtualenv because the test environment (.venv) holds an editable install,
# which does not install the config file that enables the extension.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-demo"
# Outside the repository, so notebooks made during the demo are not linted or committed.
DEMO_DIR="${JUPYTER_IDLE_DEMO_DIR:-${TMPDIR:-/tmp}/jupyter-idle-ext-demo}"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    step "Creating $VENV"
    python3 -m venv "$VENV"
fi
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"

step "Installing jupyter_idle_ext (non-editable, its frontend built in pip's build) with JupyterLab into $VENV"
python -m pip install --quiet --upgrade pip
# pip reinstalls a local directory every time, so the demo always runs this checkout's code.
python -m pip install --quiet ".[demo]"

step "Checking that the installed config enables the extension"
# The listing is coloured even when piped; drop the escape codes before matching.
extensions="$(jupyter server extension list 2>&1 | sed 's/\x1b\[[0-9;]*m//g')"
if ! grep -qE '^\s*jupyter_idle_ext\s+enabled' <<<"$extensions" ||
    ! grep -qE '^\s*jupyter_idle_ext .*OK' <<<"$extensions"; then
    printf '%s\n' "$extensions" >&2
    fail "jupyter_idle_ext is not enabled and OK in 'jupyter server extension list'"
fi
grep -E 'jupyter_idle_ext' <<<"$extensions"

mkdir -p "$DEMO_DIR"
if [ ! -e "$DEMO_DIR/idle-demo.ipynb" ]; then
    cat >"$DEMO_DIR/idle-demo.ipynb" <<'NOTEBOOK'
{
 "cells": [
  {"cell_type": "markdown", "metadata": {}, "source": ["Run the first cell, then leave the tab open and watch the server log: the kernel is culled 60 s later although this tab stays open.\n", "\n", "Run the second cell instead to see a silent busy kernel kept past every timeout."]},
  {"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [], "source": ["print('hello')"]},
  {"cell_type": "code", "execution_count": null, "metadata": {}, "outputs": [], "source": ["import time\n", "time.sleep(150)  # busy and silent: neither the kernel nor the server is stopped meanwhile"]}
 ],
 "metadata": {
  "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
 },
 "nbformat": 4,
 "nbformat_minor": 5
}
NOTEBOOK
fi

app=lab
if ! jupyter lab --version >/dev/null 2>&1; then
    app=server
fi
args=(
    --ip=127.0.0.1
    --no-browser
    "--ServerApp.root_dir=$DEMO_DIR"
    --IdleExtension.cull_idle_timeout=60
    --IdleExtension.server_idle_timeout=120
    --IdleExtension.shutdown_warning=30
    --IdleExtension.cull_interval=300
)
if [ "$(id -u)" -eq 0 ]; then
    args+=(--allow-root)
fi

cat <<EOF

==> Starting 'jupyter $app' in $DEMO_DIR

    Open the URL with the token printed below and open idle-demo.ipynb. JupyterLab's status
    bar (Notebook 7: the top right) counts down to the idle shutdown; click it for why. 30 s
    before the shutdown a notification offers "Keep working" and "Stop now"; after it, the page
    says the server stopped for idleness. And watch this log:
    - "jupyter_idle_ext: culling kernels idle for 60 s ..." states the policy at start-up;
    - "Culling idle kernel ...": a kernel that has run nothing for 60 s is stopped,
      even with its tab open;
    - a kernel running a cell (the sleep cell) is kept however long the cell takes;
    - "The server will shut down at ... (in 30 s)": nothing has run for 90 s;
      running a cell now answers "Shutdown cancelled";
    - "Shutting down the server: idle 120 s ...": the server stops and this script ends.
    Ctrl-C stops it sooner.

EOF
exec jupyter "$app" "${args[@]}" "$@"
