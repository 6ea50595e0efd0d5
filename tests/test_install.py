"""The package as a user gets it: built sdist and wheel, installed non-editably into a fresh venv.

An editable install skips data files, so only this proves that installing the wheel ships the
jupyter-config JSON and thereby enables the extension with no further step. Under
scripts/test.sh, which builds the sdist and the wheel from this tree and installs the wheel into
a fresh venv for the frontend tests, these tests check those instead of making them again.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from jupyter_idle_ext.pytest_plugin import free_port

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_JSON = Path("etc/jupyter/jupyter_server_config.d/jupyter_idle_ext.json")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(cmd: list[Any], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure show its output in the assertion."""
    result = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel, the wheel built from the sdist (what `python -m build` does by default)."""
    if importlib.util.find_spec("build") is None:
        pytest.fail(
            f"the 'build' package is missing from {sys.prefix}: install the test extras "
            "(pip install -e '.[test,lint]', or bash scripts/test.sh)"
        )
    built = os.environ.get("JUPYTER_IDLE_EXT_TEST_DIST")
    if built:
        # scripts/test.sh built them from this tree the same way, for the wheel's own venv
        return Path(built)
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], timeout=300)
    return out


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv with the wheel installed, and an environment that sees only that venv."""
    base = tmp_path_factory.mktemp("installed")
    # scripts/test.sh's venv of that wheel (for the frontend tests), made the same way
    made = os.environ.get("JUPYTER_IDLE_EXT_TEST_WHEEL_VENV")
    venv = Path(made) if made else base / "venv"
    if not made:
        run([sys.executable, "-m", "venv", venv], timeout=120)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("JUPYTER")
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        # Keep the user's own Jupyter config and runtime files out of it.
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        IPYTHONDIR=str(base / "ipython"),
    )
    if not made:
        wheel = only(dist, "*.whl")
        run(
            [venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel],
            timeout=480,
            env=env,
        )
    return venv, env


def test_sdist_contains_tests_and_config(dist: Path) -> None:
    sdist = only(dist, "*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for path in (
        "README.md",
        "setup.cfg",
        "jupyter-config/jupyter_server_config.d/jupyter_idle_ext.json",
        "tests/conftest.py",
        "tests/test_reasons.py",
        "jupyter_idle_ext/reasons.json",
        "frontend/test/reasons.cases.json",
        "tests/test_install.py",
    ):
        assert path in names, f"{path} missing from {sdist.name}"


def test_wheel_carries_the_config_as_data(dist: Path) -> None:
    wheel = only(dist, "*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert any(n.endswith(f".data/data/{CONFIG_JSON}") for n in names), names
    # the prebuilt frontend, where JupyterLab finds it with no build step (built from the sdist)
    labextension = ".data/data/share/jupyter/labextensions/jupyter-idle-ext/"
    assert any(n.endswith(labextension + "package.json") for n in names), names
    assert any(labextension + "static/remoteEntry." in n for n in names), names
    assert any(labextension + "install.json" in n for n in names), names
    # the texts of the reasons, which the server reads at import, and the test harness
    assert "jupyter_idle_ext/reasons.json" in names, names
    assert "jupyter_idle_ext/pytest_plugin.py" in names, names


def test_wheel_install_enables_the_extension(installed: tuple[Path, dict[str, str]]) -> None:
    venv, env = installed
    assert (venv / CONFIG_JSON).is_file()

    # jupyter_server_terminals' own install check: grep the listing for "<name>.*OK".
    listing = run([venv / "bin" / "jupyter", "server", "extension", "list"], timeout=120, env=env)
    text = ANSI.sub("", listing.stdout + listing.stderr)
    section = text.split(f"Config dir: {venv / 'etc' / 'jupyter'}", 1)
    assert len(section) == 2, text
    venv_section = section[1].split("Config dir:", 1)[0]
    assert re.search(r"^\s*jupyter_idle_ext enabled\s*$", venv_section, re.M), text
    assert re.search(r"^\s*jupyter_idle_ext \S+ OK\s*$", venv_section, re.M), text


def test_installed_server_starts_the_extension_and_exits_idle(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """No jpserver_extensions on the command line: the shipped config alone loads it."""
    venv, env = installed
    root = tmp_path / "root"
    root.mkdir()
    log_path = tmp_path / "server.log"
    cmd = [
        str(venv / "bin" / "jupyter"),
        "server",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={free_port()}",
        f"--ServerApp.root_dir={root}",
        "--IdleExtension.server_idle_timeout=3",
        "--IdleExtension.shutdown_warning=0",
    ]
    started = time.monotonic()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            code = proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            pytest.fail(f"server still running after 45 s:\n{log_path.read_text()[-3000:]}")
    took = time.monotonic() - started
    log = log_path.read_text()
    assert code == 0, log
    assert "IdleExtension] culling kernels idle for" in log, log
    assert "Shutting down the server: idle 3 s >= server_idle_timeout 3 s" in log, log
    assert took < 30, (took, log)
