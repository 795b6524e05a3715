"""Hostile and careless input to the bank HTTP routes and the tab (issue 10, items 8, 10, 12, 14, 15 and the
upload race), through FastAPI's test client on the host stub, as tests/test_api_routes.py does."""

from __future__ import annotations

import base64
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import pytest
import torch.nn.functional as F
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_safedenoise.banks import fileformat
from lib_safedenoise.webui import api, keys, tab
from tests.host_stub import webui_fixtures as wf
from tests import host_stub
from tests.browser import ui_session
from tests.images import write_photos

BANKS = api.ROUTE_PREFIX + "/banks"
AUTH = ("operator", "s3cret")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def client_for(session, app: FastAPI | None = None) -> TestClient:
    """The routes as the WebUI registers them; a server error comes back as a 500, as a real client sees it."""
    from tests.test_api_routes import webui_app

    app = app or webui_app()
    from lib_safedenoise.webui import host

    api.register_routes(app, api.BankService(session.backend), host.api_auth_dependencies(app))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of the test photographs, written once for the module."""
    return [(n, p.read_bytes()) for n, p in write_photos(tmp_path_factory.mktemp("photos")).items()]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """A temporary folder of this test's own for ``tempfile`` (other test runs share the system one)."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


# --------------------------------------------------------------------------- item 8: concurrent exports

def test_item8_concurrent_exports_each_get_the_whole_bank_and_leave_nothing_behind(tmp_path, private_tmp,
                                                                                    photos):
    session = ui_session.start(tmp_path)
    session.build_bank("photos", photos[:4])
    client = client_for(session)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.get(f"{BANKS}/photos/export"), range(8)))

    assert [r.status_code for r in responses] == [200] * 8, [r.text[:200] for r in responses]
    payloads = {r.json()["data"] for r in responses}
    assert len(payloads) == 1  # every request got the same, complete file
    received = tmp_path / "received.safetensors"
    received.write_bytes(base64.b64decode(payloads.pop()))
    assert fileformat.verify_bank(received).ok
    assert list(private_tmp.iterdir()) == []  # no export folder outlives its request


def test_item8_tab_exports_running_together_keep_their_own_files(tmp_path, private_tmp, photos):
    """Two users export at once: each file lives until gradio has copied it, then goes."""
    session = ui_session.start(tmp_path)
    session.build_bank("photos", photos[:2])
    handlers = tab.TabHandlers(api.BankService(session.backend))
    first, second = handlers.export("photos", False), handlers.export("photos", True)
    first_file = Path(next(first)[0]["value"])
    second_file = Path(next(second)[0]["value"])
    assert first_file.is_file() and second_file.is_file() and first_file.parent != second_file.parent
    assert next(first, None) is None and next(second, None) is None
    assert list(private_tmp.iterdir()) == []


# --------------------------------------------------------------------------- item 10: names that name no file

def test_item10_import_with_a_filename_that_names_no_file_is_a_400(tmp_path, photos):
    session = ui_session.start(tmp_path)
    session.build_bank("photos", photos[:2])
    client = client_for(session)
    data = client.get(f"{BANKS}/photos/export").json()["data"]
    for filename in ("", ".", "..", "../", "a/..", "a\\.."):
        for preview in (True, False):
            response = client.post(f"{api.ROUTE_PREFIX}/import", json={"filename": filename, "data": data,
                                                                       "preview": preview})
            assert response.status_code == 400, (filename, response.text)
            assert "names no file" in response.json()["detail"]["error"]
    assert session.backend.store().names() == ["photos"]


def test_item10_a_name_too_long_for_the_file_system_is_a_400_and_writes_nothing(tmp_path, photos):
    session = ui_session.start(tmp_path)
    client = client_for(session)
    name = "猫" * 95  # 95 characters, 285 bytes in UTF-8: over the 255-byte limit of file names
    images = [{"name": n, "data": b64(d)} for n, d in photos[:2]]
    built = client.post(BANKS, json={"name": name, "images": images})
    assert built.status_code == 400, built.text
    assert "too long" in built.json()["detail"]["error"] and "bytes" in built.json()["detail"]["error"]
    assert client.post(BANKS, json={"name": "photos", "images": images}).status_code == 200
    data = client.get(f"{BANKS}/photos/export").json()["data"]
    imported = client.post(f"{api.ROUTE_PREFIX}/import", json={"filename": name + ".safetensors", "data": data})
    assert imported.status_code == 400, imported.text
    assert "bytes" in imported.json()["detail"]["error"]
    assert sorted(p.name for p in session.bank_dir.iterdir()) == ["photos.safetensors"]


# --------------------------------------------------------------------------- item 12: enforced names, any case

def test_item12_enforced_names_are_refused_in_any_case_whether_or_not_the_file_exists(tmp_path, photos):
    session = ui_session.start(tmp_path, enforced_setting=["guarded"])
    client = client_for(session)
    # no such file yet: a case-insensitive file system would still open the enforced bank's file by this name
    for spelling in ("guarded", "GUARDED", "Guarded"):
        assert client.delete(f"{BANKS}/{spelling}").status_code == 403
        assert client.post(f"{BANKS}/{spelling}/rename", json={"new_name": "free"}).status_code == 403
    session.build_bank("guarded", photos[:2])
    session.build_bank("other", photos[:1])
    before = (session.bank_dir / "guarded.safetensors").read_bytes()
    data = client.get(f"{BANKS}/other/export").json()["data"]
    attempts = [
        client.delete(f"{BANKS}/GUARDED"),
        client.post(f"{BANKS}/GUARDED/rename", json={"new_name": "free"}),
        client.post(f"{BANKS}/other/rename", json={"new_name": "GUARDED"}),
        client.post(BANKS, json={"name": "Guarded", "overwrite": True, "images": [
            {"name": n, "data": b64(d)} for n, d in photos[:1]]}),
        client.post(f"{api.ROUTE_PREFIX}/import", json={"filename": "GUARDED.safetensors", "data": data,
                                                       "overwrite": True}),
        client.post(f"{api.ROUTE_PREFIX}/import", json={"filename": "x.safetensors", "data": data,
                                                       "name": "gUaRdEd", "overwrite": True}),
    ]
    assert [r.status_code for r in attempts] == [403] * len(attempts), [r.text for r in attempts]
    assert all("enforced" in r.json()["detail"] for r in attempts)
    assert sorted(session.backend.store().names()) == ["guarded", "other"]
    assert (session.bank_dir / "guarded.safetensors").read_bytes() == before


# --------------------------------------------------------------------------- item 14: downloads when exposed

def test_item14_an_exposed_server_without_api_auth_refuses_bank_downloads(tmp_path, photos):
    from tests.test_api_routes import webui_app

    session = ui_session.start(tmp_path, disable_extension_access=True)  # --listen, no --api-auth
    session.build_bank("photos", photos[:2])
    client = client_for(session)
    refused = client.get(f"{BANKS}/photos/export")
    assert refused.status_code == 403
    assert "--api-auth" in refused.json()["detail"] and "decode back" in refused.json()["detail"]
    assert client.get(f"{BANKS}/nope/export").status_code == 403  # nor does it tell which banks exist
    settings = client.get(f"{BANKS}/photos/export", params={"settings_only": True})
    assert settings.status_code == 200 and "latents" not in settings.json()["filename"]
    assert client.get(BANKS).status_code == 200 and client.get(f"{BANKS}/photos").status_code == 200

    allowed = ui_session.start(tmp_path, disable_extension_access=True, exposed_api_downloads=True)
    assert client_for(allowed).get(f"{BANKS}/photos/export").status_code == 200
    with_password = ui_session.start(tmp_path, disable_extension_access=True, api_auth="operator:s3cret")
    client = client_for(with_password, webui_app(api_auth="operator:s3cret"))
    assert client.get(f"{BANKS}/photos/export").status_code == 401
    assert client.get(f"{BANKS}/photos/export", auth=AUTH).status_code == 200
    local = ui_session.start(tmp_path)  # not reachable from other machines
    assert client_for(local).get(f"{BANKS}/photos/export").status_code == 200


def test_item14_the_download_setting_is_registered_and_out_of_the_apis_reach(tmp_path):
    from tests.test_api_routes import load_tab_script

    host_stub.install()
    from modules import script_callbacks, shared

    try:
        ui_session.start(tmp_path)
        shared.opts.data_labels.pop(keys.SETTING_EXPOSED_API_DOWNLOADS, None)
        load_tab_script()
        for callback in script_callbacks.callback_map["callbacks_ui_settings"]:
            callback.callback()
        option = shared.opts.data_labels[keys.SETTING_EXPOSED_API_DOWNLOADS]
        assert option.default is False and option.restrict_api
        assert shared.opts.set(keys.SETTING_EXPOSED_API_DOWNLOADS, True, is_api=True) is False
    finally:
        script_callbacks.clear_callbacks()


# --------------------------------------------------------------------------- item 15: Forge's lazy checkpoint

class RgbDigitsCheckpoint(wf.WrappedDigitsModel):
    """The digits model behind a Stable Diffusion-like VAE: RGB pixels in [-1, 1] at 8x the latent size, each
    8x8 block averaged to one grey pixel and encoded by the digits encoder. Like Forge's engines
    (backend/diffusion_engine/base.py), ``encode_first_stage`` does everything and ``get_first_stage_encoding``
    is the identity."""

    latent_space = "digits"

    def encode_first_stage(self, pixels):
        return self.inner.encode_first_stage(F.avg_pool2d(pixels.mean(1, keepdim=True), 8))

    def get_first_stage_encoding(self, encoded):
        return encoded

    def decode_first_stage(self, z):
        return self.inner.decode_first_stage(z)


def forge_before_its_first_generation(tmp_path, checkpoint):
    """A Forge server just started (the checkpoint selected, not loaded) with the bank routes on."""
    from lib_safedenoise.webui.api import Backend
    from tests.host_stub.harness import StubWebUI

    bank_dir = tmp_path / "banks"
    bank_dir.mkdir()
    wf.write_bank(bank_dir, wf.BANK)
    webui = StubWebUI(checkpoint, bank_dir, forge=True, lazy=True)
    app = FastAPI()
    api.register_routes(app, api.BankService(Backend.from_host()), [])
    return webui, TestClient(app, raise_server_exceptions=False)


def test_item15_forge_builds_a_bank_before_the_first_generation(tmp_path, photos):

    checkpoint = RgbDigitsCheckpoint(wf.load_sd_model())
    webui, client = forge_before_its_first_generation(tmp_path, checkpoint)
    from modules import sd_models

    try:
        assert isinstance(sd_models.model_data.sd_model, sd_models.FakeInitialModel)
        listed = client.get(BANKS).json()
        assert [entry["compatible"] for entry in listed] == [None]  # no model loaded yet, none claimed
        images = [{"name": n, "data": b64(d)} for n, d in photos[:3]]
        built = client.post(BANKS, json={"name": "first", "images": images})
        assert built.status_code == 200, built.text
        assert built.json()["bank_count"] == 3
        assert sd_models.model_data.sd_model is checkpoint  # loaded as a generation loads it
        entry = client.get(f"{BANKS}/first").json()
        assert entry["latent_space"] == "digits" and entry["compatible"] is True
        response = webui.txt2img(prompt="3", steps=4, width=64, height=64,
                                 safe_denoiser=wf.args(banks=("first",)))
        infotext = json.loads(response["info"])["infotexts"][0]
        assert len(response["images"]) == 1 and "Safe Denoiser: banks=first@" in infotext
        assert "Safe Denoiser error" not in infotext
        assert sd_models.model_data.sd_model is checkpoint  # the generation found it loaded
    finally:
        host_stub.configure(forge=False)


def test_item15_forge_without_any_checkpoint_answers_a_400(tmp_path, photos):
    webui, client = forge_before_its_first_generation(tmp_path, checkpoint=None)
    from modules import sd_models

    try:
        sd_models.select_checkpoint(None)  # no file in models/Stable-diffusion
        images = [{"name": n, "data": b64(d)} for n, d in photos[:1]]
        built = client.post(BANKS, json={"name": "first", "images": images})
        assert built.status_code == 400, built.text
        assert "no checkpoint" in built.json()["detail"]["error"]
    finally:
        host_stub.configure(forge=False)


# --------------------------------------------------------------------------- upload race (the tab)

def test_upload_race_build_clicked_before_the_upload_finished_keeps_the_uploads(tmp_path):
    """gradio 3.41 hands a handler fired mid-upload the files' names with no content: the tab says so and
    keeps the upload field, instead of reporting a bank of zero-byte images."""
    session = ui_session.start(tmp_path)
    handlers = tab.TabHandlers(api.BankService(session.backend))
    pending = []
    for name in ("astronaut.png", "coffee.jpg"):
        path = tmp_path / "gradio" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
        pending.append(path)
    updates = list(handlers.build([str(p) for p in pending], "", "mine", False, "negation", *[""] * 5))
    assert len(updates) == 1
    progress, report, *unchanged = updates[0]
    assert "still uploading" in report and "wait until each shows its size" in report
    assert all(update == gr.update() for update in unchanged)  # the uploads stay for the retry
    assert all(p.exists() for p in pending) and session.backend.store().names() == []
