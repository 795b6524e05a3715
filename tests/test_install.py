"""install.py run the way the WebUI runs it: ``python install.py`` in a subprocess whose PYTHONPATH starts
with the WebUI folder, where ``launch`` lives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A WebUI folder's launch.py, reduced to what install.py may use. It follows modules/launch_utils.py
# (v1.10.1): ``args`` from the command-line parser (``--skip-install``), ``is_installed`` (distribution
# metadata first, then an import spec), and ``run_pip`` (nothing under --skip-install; otherwise it runs
# ``python -m pip <command> --prefer-binary``). Here pip is not run: the command is written to PIP_LOG.
LAUNCH_PY = '''
import argparse, importlib.metadata, importlib.util, os, sys

parser = argparse.ArgumentParser()
parser.add_argument("--skip-install", action="store_true")
args, _ = parser.parse_known_args(os.environ.get("COMMANDLINE_ARGS", "").split())


def is_installed(package):
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def run_pip(command, desc=None, live=False):
    if args.skip_install:
        return
    with open(os.environ["PIP_LOG"], "a") as log:
        log.write(f"{sys.executable} -m pip {command} --prefer-binary\\n")
'''


def run_installer(tmp_path: Path, requirements: str | None = None, commandline_args: str = "") -> list[str]:
    webui, extension = tmp_path / "webui", tmp_path / "extensions" / "sd-webui-safe-denoiser"
    webui.mkdir(parents=True, exist_ok=True)
    extension.mkdir(parents=True, exist_ok=True)
    (webui / "launch.py").write_text(LAUNCH_PY)
    shutil.copy(REPO / "install.py", extension / "install.py")
    if requirements is None:
        shutil.copy(REPO / "requirements.txt", extension / "requirements.txt")
    else:
        (extension / "requirements.txt").write_text(requirements)
    log = tmp_path / "pip.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(webui), "PIP_LOG": str(log), "COMMANDLINE_ARGS": commandline_args}
    done = subprocess.run([sys.executable, str(extension / "install.py")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_is_installed_when_everything_is_present(tmp_path):
    assert run_installer(tmp_path) == []


def test_only_missing_or_out_of_range_requirements_are_installed(tmp_path):
    requirements = ("numpy>=1.0  # present\n"
                    "safetensors<0.0.1\n"
                    "\n# comment line\n"
                    "safe-denoiser-absent-package>=1\n")
    commands = run_installer(tmp_path, requirements)
    assert len(commands) == 2
    assert commands[0].endswith('-m pip install "safetensors<0.0.1" --prefer-binary')
    assert commands[1].endswith('-m pip install "safe-denoiser-absent-package>=1" --prefer-binary')


def test_skip_install_does_nothing(tmp_path):
    assert run_installer(tmp_path, "safe-denoiser-absent-package>=1\n", "--skip-install") == []
