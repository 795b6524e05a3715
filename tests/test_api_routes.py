"""The bank HTTP routes and the tab's glue script, on the host stub, through FastAPI's test client."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.testclient import TestClient

from lib_safedenoise.webui import api, host, keys
from tests.browser import ui_session
from tests.images import write_broken, write_photos

SETTINGS = (keys.SETTING_BANK_DIR, keys.SETTING_DEFAULT_ENABLED, keys.SETTING_DEFAULT_BANKS,
            keys.SETTING_ENFORCED_BANKS, keys.SETTING_HIDE_PREVIEWS, keys.SETTING_EXPOSED_API_DOWNLOADS)
REPO = Path(__file__).resolve().parents[1]
TAB_SCRIPT = REPO / "scripts" / "safe_denoiser_tab.py"
AUTH = ("operator", "s3cret")


def webui_app(*, api_enabled: bool = True, api_auth: str | None = None) -> FastAPI:
    """The WebUI's FastAPI app as modules/api/api.py ``Api`` leaves it: with ``--api`` its routes exist, and
    with ``--api-auth user:pass`` ``add_api_route`` gives each one ``Depends(self.auth)`` (HTTP basic,
    401 with ``WWW-Authenticate: Basic`` on a wrong password)."""
    app = FastAPI()
    if not api_enabled:
        return app
    credentials = dict(pair.split(":") for pair in api_auth.split(",")) if api_auth else {}

    def auth(given: HTTPBasicCredentials = Depends(HTTPBasic())):
        if given.username in credentials and secrets.compare_digest(given.password, credentials[given.username]):
            return True
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    app.add_api_route("/sdapi/v1/options", lambda: {}, methods=["GET"],
                      dependencies=[Depends(auth)] if api_auth else [])
    return app


def load_tab_script():
    """Load scripts/safe_denoiser_tab.py as the WebUI loads script files (callbacks cleared first)."""
    from modules import script_callbacks, scripts

    scripts.load_scripts([str(TAB_SCRIPT)])
    return script_callbacks


@pytest.fixture
def stub_callbacks():
    from tests import host_stub

    host_stub.install()
    from modules import script_callbacks

    yield script_callbacks
    script_callbacks.clear_callbacks()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def client_for(session, app=None, **app_options) -> TestClient:
    app = app or webui_app(**app_options)
    api.register_routes(app, api.BankService(session.backend), host.api_auth_dependencies(app))
    return TestClient(app)


def test_glue_registers_the_routes_behind_the_webui_api_auth(tmp_path, stub_callbacks):
    session = ui_session.start(tmp_path, api_auth="operator:s3cret")
    session.build_bank("photos", [(n, p.read_bytes()) for n, p in list(write_photos(tmp_path / "p").items())[:2]])
    load_tab_script()
    app = webui_app(api_auth="operator:s3cret")
    stub_callbacks.app_started_callback(None, app)
    client = TestClient(app)
    assert client.get(f"{api.ROUTE_PREFIX}/banks").status_code == 401
    assert client.get(f"{api.ROUTE_PREFIX}/banks", auth=("operator", "wrong")).status_code == 401
    listed = client.get(f"{api.ROUTE_PREFIX}/banks", auth=AUTH)
    assert listed.status_code == 200 and [b["name"] for b in listed.json()] == ["photos"]
    assert listed.json()[0]["count"] == 2 and listed.json()[0]["enforced"] is False


def test_no_routes_without_the_webui_api(tmp_path, stub_callbacks):
    ui_session.start(tmp_path)
    load_tab_script()
    app = webui_app(api_enabled=False)
    stub_callbacks.app_started_callback(None, app)
    assert TestClient(app).get(f"{api.ROUTE_PREFIX}/banks").status_code == 404


def test_build_from_base64_uploads_reports_every_file(tmp_path):
    session = ui_session.start(tmp_path)
    client = client_for(session)
    photos = write_photos(tmp_path / "p")
    broken = write_broken(tmp_path / "b")
    images = [{"name": "astronaut.png", "data": b64(photos["astronaut.png"].read_bytes())},
              {"name": "coffee.jpg", "data": "data:image/jpeg;base64," + b64(photos["coffee.jpg"].read_bytes())},
              {"name": "truncated.jpg", "data": b64(broken["truncated.jpg"][0].read_bytes())}]
    response = client.post(f"{api.ROUTE_PREFIX}/banks", json={"name": "mine", "images": images,
                                                              "description": "my avoid list"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["bank_count"] == 2 and report["counts"] == {"added": 2, "truncated": 1}
    assert [f["source"] for f in report["files"]] == ["astronaut.png", "coffee.jpg", "truncated.jpg"]
    inspected = client.get(f"{api.ROUTE_PREFIX}/banks/mine").json()
    assert inspected["card"]["description"] == "my avoid list" and inspected["latent_space"] == "test"
    again = client.post(f"{api.ROUTE_PREFIX}/banks", json={"name": "mine", "images": images})
    assert again.status_code == 400 and "already exists" in again.json()["detail"]["error"]
    empty = client.post(f"{api.ROUTE_PREFIX}/banks", json={"name": "empty", "images": images[2:]})
    assert empty.status_code == 400 and empty.json()["detail"]["report"]["counts"] == {"truncated": 1}
    garbage = client.post(f"{api.ROUTE_PREFIX}/banks", json={"name": "x", "images": [{"data": "%%%"}]})
    assert garbage.status_code == 400 and "images[0].data is not valid base64" in garbage.json()["detail"]["error"]
    assert session.backend.store().names() == ["mine"]
    assert not list(Path(tmp_path).glob("**/safe-denoiser-upload-*"))


def test_compatibility_follows_the_loaded_model(tmp_path):
    session = ui_session.start(tmp_path)
    session.build_bank("photos", [(n, p.read_bytes()) for n, p in list(write_photos(tmp_path / "p").items())[:1]])
    client = client_for(session)
    assert client.get(f"{api.ROUTE_PREFIX}/banks").json()[0]["compatible"] is None
    session.load_model("sdxl")
    entry = client.get(f"{api.ROUTE_PREFIX}/banks").json()[0]
    assert entry["compatible"] is False and "SDXL" in entry["compatibility"]
    assert client.get(f"{api.ROUTE_PREFIX}/banks/photos").json()["compatible"] is False
    assert client.get(f"{api.ROUTE_PREFIX}/banks/nope").status_code == 404


def test_export_import_preview_rename_and_delete(tmp_path):
    session = ui_session.start(tmp_path)
    session.build_bank("photos", [(n, p.read_bytes()) for n, p in list(write_photos(tmp_path / "p").items())[:2]])
    session.backend.store().save_settings("photos", None, description="avoid these", usage_hint="strength 1")
    client = client_for(session)
    exported = client.get(f"{api.ROUTE_PREFIX}/banks/photos/export").json()
    assert exported["filename"] == "photos.safetensors"
    settings = client.get(f"{api.ROUTE_PREFIX}/banks/photos/export", params={"settings_only": True}).json()
    assert settings["filename"] == "photos.preset.json"
    preview = client.post(f"{api.ROUTE_PREFIX}/import", json={"filename": exported["filename"],
                                                              "data": exported["data"], "name": "copy",
                                                              "preview": True})
    assert preview.status_code == 200 and preview.json()["installed"] is None
    assert preview.json()["card"]["card"]["description"] == "avoid these"
    assert session.backend.store().names() == ["photos"]
    installed = client.post(f"{api.ROUTE_PREFIX}/import", json={"filename": exported["filename"],
                                                                "data": exported["data"], "name": "copy"})
    assert installed.json()["installed"] == "copy" and session.backend.store().names() == ["copy", "photos"]
    renamed = client.post(f"{api.ROUTE_PREFIX}/banks/copy/rename", json={"new_name": "copy two"})
    assert renamed.json() == {"name": "copy two"}
    assert client.delete(f"{api.ROUTE_PREFIX}/banks/copy two").json() == {"deleted": "copy two"}
    assert session.backend.store().names() == ["photos"]
    assert client.delete(f"{api.ROUTE_PREFIX}/banks/copy two").status_code == 404


def test_enforced_banks_cannot_be_deleted_renamed_or_replaced(tmp_path):
    session = ui_session.start(tmp_path, enforced_setting=["guarded"])
    photos = write_photos(tmp_path / "p")
    session.build_bank("guarded", [(n, p.read_bytes()) for n, p in list(photos.items())[:2]])
    client = client_for(session)
    exported = client.get(f"{api.ROUTE_PREFIX}/banks/guarded/export").json()
    before = (session.bank_dir / "guarded.safetensors").read_bytes()
    attempts = [
        client.delete(f"{api.ROUTE_PREFIX}/banks/guarded"),
        client.post(f"{api.ROUTE_PREFIX}/banks/guarded/rename", json={"new_name": "free"}),
        client.post(f"{api.ROUTE_PREFIX}/banks", json={"name": "guarded", "overwrite": True, "images": [
            {"name": "coffee.jpg", "data": b64(photos["coffee.jpg"].read_bytes())}]}),
        client.post(f"{api.ROUTE_PREFIX}/import", json={"filename": "guarded.safetensors", "data": exported["data"],
                                                       "overwrite": True}),
    ]
    assert [r.status_code for r in attempts] == [403] * 4
    assert all("enforced" in r.json()["detail"] for r in attempts)
    assert (session.bank_dir / "guarded.safetensors").read_bytes() == before
    assert client.get(f"{api.ROUTE_PREFIX}/banks/guarded").json()["enforced"] is True


def test_listen_without_insecure_access_refuses_writes_unless_the_api_has_a_password(tmp_path):
    session = ui_session.start(tmp_path, disable_extension_access=True)
    session.build_bank("photos", [(n, p.read_bytes()) for n, p in list(write_photos(tmp_path / "p").items())[:1]])
    client = client_for(session)
    assert client.get(f"{api.ROUTE_PREFIX}/banks").status_code == 200
    refused = client.delete(f"{api.ROUTE_PREFIX}/banks/photos")
    assert refused.status_code == 403 and "--api-auth" in refused.json()["detail"]
    session = ui_session.start(tmp_path, disable_extension_access=True, api_auth="operator:s3cret")
    client = client_for(session, api_auth="operator:s3cret")
    assert client.delete(f"{api.ROUTE_PREFIX}/banks/photos", auth=AUTH).status_code == 200


def test_settings_and_tab_registration(tmp_path, stub_callbacks):
    ui_session.start(tmp_path, hide_ui_dir_config=True)
    from modules import shared

    for key in SETTINGS:
        shared.opts.data_labels.pop(key, None)
    load_tab_script()
    for callback in stub_callbacks.callback_map["callbacks_ui_settings"]:
        callback.callback()
    labels = shared.opts.data_labels
    assert set(SETTINGS) <= set(labels)
    assert all(labels[k].section == ("safe_denoiser", "Safe Denoiser") for k in SETTINGS)
    restricted = {k for k in SETTINGS if labels[k].restrict_api}
    assert restricted == {keys.SETTING_BANK_DIR, keys.SETTING_ENFORCED_BANKS, keys.SETTING_HIDE_PREVIEWS,
                          keys.SETTING_EXPOSED_API_DOWNLOADS}
    assert labels[keys.SETTING_BANK_DIR].component_args == {"visible": False}  # --hide-ui-dir-config
    assert shared.opts.set(keys.SETTING_ENFORCED_BANKS, ["x"], is_api=True) is False
    assert labels[keys.SETTING_DEFAULT_BANKS].component_args()["choices"] == []
    (tab, title, elem_id), = stub_callbacks.callback_map["callbacks_ui_tabs"][0].callback()
    assert (title, elem_id) == ("Safe Denoiser", "safe_denoiser_tab") and tab.blocks


def forge_webui_app() -> FastAPI:
    """Forge's options route: ``Api.set_config`` hands the request to ``modules.sysinfo.set_config``, which
    applies each key with ``opts.set(k, v, is_api=False)`` (stable-diffusion-webui-forge dfdcbab6,
    modules/api/api.py and modules/sysinfo.py), so ``restrict_api`` is not checked there."""
    app = webui_app()

    def set_config(req: dict[str, Any]):
        from modules import shared

        for key, value in req.items():
            shared.opts.set(key, value, is_api=False)

    app.add_api_route("/sdapi/v1/options", set_config, methods=["POST"])
    return app


def test_forge_options_route_leaves_enforcement_alone(tmp_path):
    from tests.host_stub import webui_fixtures as wf

    app = forge_webui_app()
    webui = wf.start(tmp_path, forge=True, enforce=wf.BANK, app=app)
    try:
        opts = webui.shared.opts
        opts.data[keys.SETTING_ENFORCED_BANKS] = [wf.BANK]
        response = TestClient(app).post("/sdapi/v1/options", json={
            keys.SETTING_ENFORCED_BANKS: [], "disabled_extensions": ["sd-webui-safe-denoiser"],
            "live_previews_enable": False})
        assert response.status_code == 200
        assert opts.data[keys.SETTING_ENFORCED_BANKS] == [wf.BANK]
        assert opts.data["disabled_extensions"] == []
        assert opts.data["live_previews_enable"] is False  # options that are not restricted still change
    finally:
        wf.start(tmp_path / "a1111")
