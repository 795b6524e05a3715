"""Fixtures of the opt-in real-WebUI suite (marker ``webui``; see tests/webui/README.md).

Skipped, with the reason, unless ``SD_WEBUI_DIR`` and ``SD_WEBUI_PYTHON`` are set. One WebUI process runs at a
time (each holds the full SD1 UNet in fp32, 5-7 GB): ``webui`` is the default server, ``WebUIPool.start`` restarts
with other flags or settings when a test needs them. Every server is stopped when its test session ends.
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


def pytest_collection_modifyitems(items):
    """Tests on the enforcing server run last, so the default server starts only once."""
    items.sort(key=lambda item: "enforced_webui" in getattr(item, "fixturenames", ()))


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

    def start(self, extra_args: tuple[str, ...] = (), settings: dict | None = None) -> WebUIServer:
        key = (tuple(extra_args), json.dumps(settings or {}, sort_keys=True))
        if self.server is not None and self._key == key and self.server.process.poll() is None:
            return self.server
        self.stop()
        config_file = self.data_dir / "config.json"
        if settings:
            config_file.write_text(json.dumps(settings))
        else:
            config_file.unlink(missing_ok=True)
        server = WebUIServer(self.config, self.data_dir, extra_args)
        server.start()  # stops what it started if it fails
        self.server, self._key = server, key
        if not self.fresh_references and not extra_args and not settings:
            self.fresh_references = {name: self.server.txt2img(**request)
                                     for name, request in REFERENCE_REQUESTS.items()}
        return self.server

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
