"""The three WebUI hosts the real-WebUI suite runs against, told apart by their source tree, and how each one
is started, recognised as ready and stopped on a CPU-only machine without network access.

Standard library only: ``harness/smoke.py`` uses it with any interpreter, ``webui_server.py`` for the suite.

| host | told apart by | version it reports |
|---|---|---|
| AUTOMATIC1111 WebUI (1.10.x) | neither ``modules_forge/`` nor ``backend/`` | ``Version: 1.10.1`` |
| Forge (2.x, lllyasviel) | ``modules_forge/`` and ``backend/`` | ``Version: f2.0.1v1.10.1-...`` |
| reForge (Panchovix) | ``modules_forge/`` and ``ldm_patched/`` | ``Version: <its CHANGELOG/tag>`` |
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

A1111, FORGE, REFORGE = "a1111", "forge", "reforge"
HOST_NAMES = {A1111: "AUTOMATIC1111 WebUI", FORGE: "Forge", REFORGE: "reForge"}

# Flags every host gets: no environment preparation (no git clone or pip at start-up), no downloads, the API
# with its stop routes, a fixed port and a data dir of our own. No --server-name: gradio then binds 127.0.0.1,
# and any --server-name makes the WebUI treat the server as reachable from other machines
# (cmd_opts.disable_extension_access), which the extension's bank API obeys by refusing writes.
COMMON_FLAGS = ("--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check",
                "--do-not-download-clip", "--no-download-sd-model", "--api", "--api-server-stop")

# Device flags. A1111: its CI test mode (--test-server adds --api, --disable-nan-check and, without --ckpt, the
# empty checkpoint test/test_files/empty.pt) on the CPU in fp32. Forge and reForge: their backend (Forge:
# backend/args.py; reForge: ldm_patched/modules/args_parser.py) picks the device when imported and looks for CUDA
# unless --always-cpu is given; it keeps fp32 on the CPU without further flags.
DEVICE_FLAGS = {
    A1111: ("--test-server", "--no-half", "--disable-opt-split-attention", "--use-cpu", "all"),
    FORGE: ("--always-cpu", "--skip-python-version-check"),
    REFORGE: ("--always-cpu", "--skip-python-version-check"),
}

# Stopping through the API (--api-server-stop). Forge and reForge run their main loop in
# modules_forge/main_thread.loop(), which server-stop does not end (it only closes the port); server-kill
# calls os._exit(0) at once and never answers.
STOP_ROUTES = {A1111: "/sdapi/v1/server-stop", FORGE: "/sdapi/v1/server-kill", REFORGE: "/sdapi/v1/server-kill"}

# The log line that says the checkpoint is loaded: A1111 "Model loaded in 5.9s (...)", reForge "Model
# sd15-random.safetensors [876c083973] loaded in 4.1s (...)". Forge loads it lazily, on the first generation
# (or whatever first needs it), and prints nothing at start-up: "Startup time" is all there is.
READY_PATTERNS = {
    A1111: re.compile(r"Model (.* )?loaded in"),
    FORGE: re.compile(r"Startup time"),
    REFORGE: re.compile(r"Model (.* )?loaded in"),
}
LOADS_MODEL_LAZILY = {A1111: False, FORGE: True, REFORGE: False}


def detect_kind(root: Path) -> str:
    root = Path(root)
    if (root / "modules_forge").is_dir():
        if (root / "ldm_patched").is_dir():
            return REFORGE
        return FORGE
    return A1111


def describe(root: Path) -> str:
    """``"reForge 3b56b268 (git describe) at <root>"``: the host and, if the root is a git work tree, its commit."""
    root = Path(root)
    kind = detect_kind(root)
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--tags", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return f"{HOST_NAMES[kind]} {commit or '(not a git checkout)'} at {root}"


def launch_command(python: Path, root: Path, *, port: int, data_dir: Path, ckpt: Path | None = None,
                   extra_args: tuple[str, ...] = ()) -> list[str]:
    """The full command line, run from ``root``."""
    kind = detect_kind(root)
    command = [str(python), "launch.py", *COMMON_FLAGS, "--port", str(port), "--data-dir", str(data_dir),
               *DEVICE_FLAGS[kind]]
    if kind == FORGE:
        # Forge's gradio 4 serves ``file=`` paths only from its allowed paths, by default just the data dir
        # (modules/cmd_args.py --gradio-allowed-path): its own script.js and javascript/ sit in the root.
        command += ["--gradio-allowed-path", str(root)]
    if ckpt is not None:
        command += ["--ckpt", str(ckpt)]
    return command + list(extra_args)


def offline_environment(hf_home: Path | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: offline Hugging Face libraries (with ``hf_home`` as their cache), no gradio
    analytics, unbuffered output, and none of a calling virtual environment's variables."""
    env = dict(os.environ if base is None else base, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False",
               PYTHONUNBUFFERED="1")
    if hf_home is not None:
        hub = str(Path(hf_home) / "hub")
        env.update(HF_HOME=str(hf_home), HF_HUB_CACHE=hub, HUGGINGFACE_HUB_CACHE=hub)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    return env


def is_ready_log(kind: str, log: str) -> bool:
    return READY_PATTERNS[kind].search(log) is not None and "Startup time" in log
