"""A WebUI session on the host stub for the UI, tab and API-route tests.

Settings and launch flags are the stub's ``shared.opts`` / ``shared.cmd_opts``, read through the real
``lib_safedenoise.webui.host``; the bank folder is a real folder of real bank files. Only the encoder differs
from the WebUI's: the stub has no VAE, so banks are encoded by the builder's deterministic
``TestEncoder`` (latent space ``test``), under a real lock standing in for the WebUI's queue lock.
"""

from __future__ import annotations

import dataclasses
import threading
import types
from pathlib import Path

from tests import host_stub

ENCODER_RESOLUTION = 32


@dataclasses.dataclass
class UiSession:
    backend: object
    bank_dir: Path
    queue_lock: threading.Lock
    shared: object

    def load_model(self, latent_space: str | None) -> None:
        """Stand in a checkpoint of ``latent_space`` (None: no checkpoint loaded)."""
        self.shared.sd_model = None if latent_space is None else types.SimpleNamespace(latent_space=latent_space)

    def build_bank(self, name: str, sources) -> object:
        """Write a bank straight into the folder (as an operator would, even one the server enforces)."""
        return self.backend.store().build(sources, self.backend.encoder(), name)


def start(tmp_path: Path, *, enforce: str | None = None, enforced_setting=(), hide_ui_dir_config: bool = False,
          disable_extension_access: bool = False, api_auth: str | None = None, default_enabled: bool = False,
          default_banks=(), last_report: dict | None = None, exposed_api_downloads: bool = False) -> UiSession:
    host_stub.configure(forge=False)
    from lib_safedenoise.webui import keys, server, session
    from lib_safedenoise.webui.api import Backend
    from lib_safedenoise.banks.encoders import TestEncoder
    from modules import options, shared

    bank_dir = Path(tmp_path) / "banks"
    bank_dir.mkdir(parents=True, exist_ok=True)
    settings = {keys.SETTING_BANK_DIR: str(bank_dir), keys.SETTING_DEFAULT_ENABLED: default_enabled,
                keys.SETTING_DEFAULT_BANKS: list(default_banks),
                keys.SETTING_ENFORCED_BANKS: list(enforced_setting), keys.SETTING_HIDE_PREVIEWS: False,
                keys.SETTING_EXPOSED_API_DOWNLOADS: exposed_api_downloads}
    for key, value in settings.items():
        shared.opts.add_option(key, options.OptionInfo(value, key))
        shared.opts.data[key] = value
    shared.cmd_opts.safe_denoiser_enforce = enforce
    shared.cmd_opts.hide_ui_dir_config = hide_ui_dir_config
    shared.cmd_opts.disable_extension_access = disable_extension_access
    shared.cmd_opts.api_auth = api_auth
    shared.sd_model = None
    session.remember_report(last_report or {})
    lock = threading.Lock()
    backend = dataclasses.replace(Backend.from_host(), encoder=lambda: TestEncoder(ENCODER_RESOLUTION),
                                  gpu_lock=lambda: lock)
    assert server.bank_store().folder == bank_dir
    return UiSession(backend, bank_dir, lock, shared)


def sample_report() -> dict:
    """A report as ``GenerationSession.report`` makes it: two images, 6 steps, a hires pass on image 0."""
    def steps(fired_steps, betas, pass_name="first"):
        return [{"pass": pass_name, "step": s, "fired": s in fired_steps, "beta": b}
                for s, b in zip(range(1, len(betas) + 1), betas)]
    return {"engine": "test", "problems": [],
            "images": {"0": {"fired": "1-2, hires 1", "steps": steps({1, 2}, [0.9, 0.4, 0.0, None, None, None])
                             + steps({1}, [0.3, 0.0], "hires")},
                       "1": {"fired": "none", "steps": steps(set(), [0.0, 0.0, 0.0, None, None, None])}}}
