"""Bank building through the tab's code path (``BankService.build`` behind the bank API): the real VAE encodes
the uploads, under the WebUI's queue lock, and the bank then drives a generation."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from webui_server import REPO_ROOT, encode_image, script_args

sys.path.insert(0, str(REPO_ROOT))
from lib_safedenoise.banks import fileformat  # noqa: E402
from lib_safedenoise.webui.api import ROUTE_PREFIX  # noqa: E402

pytestmark = pytest.mark.webui

BUILT_BANK = "webui-suite-built"


def uploads(count: int = 3, side: int = 64) -> list[dict]:
    generator = np.random.default_rng(5)
    return [{"name": f"noise-{i}.png", "data": encode_image(generator.integers(0, 256, (side, side, 3), np.uint8))}
            for i in range(count)]


def build(webui, name: str, images: list[dict]) -> dict:
    response = webui.post(f"{ROUTE_PREFIX}/banks", {"name": name, "images": images, "overwrite": True})
    assert response.status_code == 200, response.text
    return response.json()


def test_bank_built_from_uploads_with_the_real_vae(webui, webui_config):
    build(webui, BUILT_BANK, uploads(2))
    path = webui.bank_dir / f"{BUILT_BANK}.safetensors"
    meta = fileformat.read_metadata(path)
    assert meta.latent_space == "sd1" and meta.count == 2 and meta.channels == 4
    listed = {bank["name"]: bank for bank in webui.get(f"{ROUTE_PREFIX}/banks")}
    assert listed[BUILT_BANK]["compatible"] is True
    latents = fileformat.load_bank(path).latents.float()
    if webui_config.ckpt is not None:  # the empty checkpoint's zero VAE encodes everything to zeros
        assert latents.std() > 0 and not np.allclose(latents[0].numpy(), latents[1].numpy())
    result = webui.txt2img(alwayson_scripts=script_args(banks=[BUILT_BANK], window_end=0.5))
    assert result.report["problems"] == [] and result.report["images"]["0"]["fired"] == "1-2"


def test_bank_build_before_any_generation(cold_webui):
    """Right after a start, before anything generated (Forge loads its checkpoint lazily, on the first
    generation): a build either works, with the checkpoint's real VAE, or answers with a clear message. Never a
    500 from reaching into a model that is not loaded yet (Forge's ``FakeInitialModel`` has no
    ``get_first_stage_encoding``). The suite's other servers warm up first, which would hide this."""
    assert cold_webui.generations == 0, "this test must meet a server that has not generated anything yet"
    name = BUILT_BANK + "-cold"
    response = cold_webui.post(f"{ROUTE_PREFIX}/banks", {"name": name, "images": uploads(2), "overwrite": True})
    text = response.text
    assert response.status_code != 500 and "has no attribute" not in text and "FakeInitialModel" not in text, text
    if response.status_code == 200:
        meta = fileformat.read_metadata(cold_webui.bank_dir / f"{name}.safetensors")
        assert meta.latent_space == "sd1" and meta.count == 2, meta
    else:
        assert response.status_code in (400, 409, 503), text
        detail = response.json()["detail"]
        message = detail["error"] if isinstance(detail, dict) else str(detail)
        assert any(word in message.lower() for word in ("checkpoint", "model")), message
    # the server still generates afterwards
    assert cold_webui.txt2img().images


def test_bank_build_waits_for_the_generation_holding_the_queue_lock(webui):
    """A build posted while a generation runs finishes only after that generation."""
    finished: dict[str, float] = {}

    def generate():
        webui.txt2img(steps=8)
        finished["generation"] = time.monotonic()

    worker = threading.Thread(target=generate)
    worker.start()
    time.sleep(3)  # the generation has taken the queue lock by now
    assert worker.is_alive(), "the generation finished before the build was posted: make it longer"
    build(webui, BUILT_BANK + "-locked", uploads(1))
    finished["build"] = time.monotonic()
    worker.join()
    assert finished["build"] > finished["generation"]
