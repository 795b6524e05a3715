"""Fixtures of the opt-in real-WebUI suite (marker ``webui``; see tests/webui/README.md).

Skipped, with the reason, unless ``SD_WEBUI_DIR`` and ``SD_WEBUI_PYTHON`` are set. One WebUI process runs at a
time (each holds the full SD1 UNet in fp32, 5-7 GB): ``webui`` is the default server, ``WebUIPool.start`` restarts
with other flags or settings when a test needs them. Every server is stopped when its test session ends.
The host (AUTOMATIC1111, Forge or reForge) is told apart from its source tree and named in the session header.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from webui_server import (REPO_ROOT, SD1_BANK, WRONG_FAMILY_BANK, Generation, WebUIConfig, WebUIServer,
                          write_bank)


# Requests whose images a fresh server produced before the extension ran anything.
REFERENCE_REQUESTS = {
    "Euler a": {"sampler_name": "Euler a"},
    "DDIM": {"sampler_name": "DDIM"},
}


def pytest_report_header(config):
    """Which host the suite runs against, at start-up: AUTOMATIC1111, Forge or reForge, with its commit."""
    found = WebUIConfig.from_environment()
    if isinstance(found, str):
        return f"real WebUI: none ({found})"
    return [f"real WebUI: {found.describe()}",
            f"  host kind: {found.kind}; python {found.python}; checkpoint {found.ckpt or 'the empty test one'}; "
            f"HF_HOME {found.hf_home or 'unset'}"]


def _run_order(item) -> int:
    """Tests on a server that has not generated yet run first; those on the enforcing server last, so the
    default server starts only once."""
    fixtures = getattr(item, "fixturenames", ())
    return 0 if "cold_webui" in fixtures else 2 if "enforced_webui" in fixtures else 1


def pytest_collection_modifyitems(items):
    items.sort(key=_run_order)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report shows the end of the server log."""
    outcome = yield
    report = outcome.get_result()
    pool = getattr(item, "funcargs", {}).get("webui_pool")
    if report.failed and pool is not None and pool.server is not None:
        report.sections.append(("WebUI log (tail)", pool.server.log_tail(40)))


class WebUIPool:
    """Holds the one running server; ``start`` replaces it when flags or settings differ."""

    def __init__(self, config: WebUIConfig, data_dir: Path):
        self.config = config
        self.data_dir = data_dir
        self.server: WebUIServer | None = None
        self._key = None
        self.fresh_references: dict[str, Generation] = {}

    def start(self, extra_args: tuple[str, ...] = (), settings: dict | None = None, *,
              warm_up: bool = True) -> WebUIServer:
        """The running server if its flags and settings are these, else a new one. ``warm_up=False``: a server
        that has not generated anything yet (Forge: its checkpoint not loaded) and no reference images yet."""
        key = (tuple(extra_args), json.dumps(settings or {}, sort_keys=True))
        running = self.server is not None and self._key == key and self.server.process.poll() is None
        if not (running and (warm_up or self.server.generations == 0)):
            self.stop()
            config_file = self.data_dir / "config.json"
            if settings:
                config_file.write_text(json.dumps(settings))
            else:
                config_file.unlink(missing_ok=True)
            server = WebUIServer(self.config, self.data_dir, extra_args, warm_up=warm_up)
            server.start()  # stops what it started if it fails
            self.server, self._key = server, key
        if warm_up and not self.fresh_references and not extra_args and not settings:
            self.fresh_references = {name: self.server.txt2img(**request)
                                     for name, request in REFERENCE_REQUESTS.items()}
        return self.server

    def unprotected_reference(self, name: str = "Euler a") -> Generation:
        """The image the default server gave for ``REFERENCE_REQUESTS[name]`` with the extension off (starting
        that server first if no test has yet)."""
        if name not in self.fresh_references:
            self.start()
        return self.fresh_references[name]

    def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            server.stop()


@pytest.fixture(scope="session")
def webui_config() -> WebUIConfig:
    config = WebUIConfig.from_environment()
    if isinstance(config, str):
        pytest.skip(config)
    return config


@pytest.fixture(scope="session")
def webui_data_dir(webui_config, tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("webui-data")
    _install_extension_requirements(webui_config)
    write_bank(data_dir / "models" / "safe-denoiser", SD1_BANK, "sd1")
    write_bank(data_dir / "models" / "safe-denoiser", WRONG_FAMILY_BANK, "sdxl")
    return data_dir


@pytest.fixture(scope="session")
def webui_pool(webui_config, webui_data_dir):
    pool = WebUIPool(webui_config, webui_data_dir)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def webui(webui_pool) -> WebUIServer:
    """The default server: test-mode flags (plus ``--ckpt $SD_WEBUI_CKPT``), no extra settings."""
    return webui_pool.start()


@pytest.fixture
def cold_webui(webui_pool) -> WebUIServer:
    """The default server before any generation (no warm-up; Forge has not loaded its checkpoint yet). Tests
    using it run first, so it is the session's first server and is then reused as ``webui``."""
    return webui_pool.start(warm_up=False)


@pytest.fixture
def needs_checkpoint(webui_config):
    """Visible effects need real (random) weights: the test server's empty checkpoint gives grey images."""
    if webui_config.ckpt is None:
        pytest.skip("needs SD_WEBUI_CKPT (e.g. the random-weights SD1.5 checkpoint): the test server's empty "
                    "checkpoint has zero weights, so every image is uniform grey and effects are invisible")


def _install_extension_requirements(config: WebUIConfig) -> None:
    """What the WebUI would run at start-up (launch_utils.run_extension_installer), skipped by the test mode."""
    installer = REPO_ROOT / "install.py"
    if not installer.is_file():
        return
    env = dict(os.environ, PYTHONPATH=str(config.root))
    result = subprocess.run([str(config.python), str(installer)], cwd=config.root, env=env, capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"install.py failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
