""""Negate this image" on the host stub: the HTTP route, the gallery button's event and its place on the page.

The WebUI's output folder is a real folder set through the WebUI's own setting (``outdir_txt2img_samples``),
read by the real ``host.output_folders``; banks are real bank files encoded by the session's test encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from lib_safedenoise.banks import fileformat
from lib_safedenoise.webui import api, host, negate_image
from tests.browser import ui_session
from tests.images import write_broken, write_photos
from tests.test_api_routes import b64, load_tab_script, stub_callbacks, webui_app  # noqa: F401 (a fixture)

ROUTE = f"{api.ROUTE_PREFIX}{negate_image.ROUTE}"


def start(tmp_path: Path, **options):
    """A stub session whose txt2img output folder holds three generated images; its negator and client."""
    session = ui_session.start(tmp_path, **options)
    from modules import options as webui_options

    outputs = tmp_path / "outputs" / "txt2img-images"
    outputs.mkdir(parents=True)
    session.shared.opts.add_option("outdir_txt2img_samples", webui_options.OptionInfo("", "txt2img outputs"))
    session.shared.opts.data["outdir_txt2img_samples"] = str(outputs)
    photos = write_photos(tmp_path / "photos")
    generated = {}
    for index, (name, path) in enumerate(list(photos.items())[:3]):
        generated[name] = outputs / f"0000{index}-{index}.png"
        Image.open(path).convert("RGB").save(generated[name])
    negator = negate_image.ImageNegator.from_host(api.BankService(session.backend))
    app = webui_app()
    api.register_routes(app, negator.service, host.api_auth_dependencies(app),
                        extra_routes=[negate_image.add_route(negator)])
    return session, negator, TestClient(app), list(generated.values())


def bank_file(session, name: str) -> Path:
    return session.bank_dir / f"{name}{fileformat.BANK_SUFFIX}"


def test_an_output_is_appended_to_an_existing_bank_keeping_its_latents(tmp_path):
    session, _, client, outputs = start(tmp_path)
    session.build_bank("avoid", [outputs[0]])
    before = session.backend.store().load("avoid").latents.clone()
    response = client.post(ROUTE, json={"bank": "avoid", "path": str(outputs[1])})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["bank"], answer["created"], answer["count"], answer["image"]) == ("avoid", False, 2,
                                                                                    outputs[1].name)
    bank = session.backend.store().load("avoid")
    assert bank.role == "negation" and len(bank.latents) == 2
    assert torch.equal(bank.latents[:1], before)  # the bank's own latent is kept as it was
    assert not torch.equal(bank.latents[1], before[0])


def test_a_new_bank_is_created_from_a_served_url_or_from_base64(tmp_path):
    session, _, client, outputs = start(tmp_path)
    # the URL the page shows a saved output under: gradio's file= route, A1111's ?mtime suffix, %-escapes
    url = f"http://127.0.0.1:7860/file={str(outputs[0]).replace(' ', '%20')}?1700000000.0"
    created = client.post(ROUTE, json={"bank": "never again", "path": url})
    assert created.status_code == 200, created.text
    assert created.json()["created"] is True and created.json()["count"] == 1
    assert session.backend.store().load("never again").role == "negation"
    uploaded = client.post(ROUTE, json={"bank": "from bytes", "image": b64(outputs[1].read_bytes()),
                                        "name": "mine.png"})
    assert uploaded.status_code == 200 and uploaded.json()["image"] == "mine.png"
    assert session.backend.store().names() == ["from bytes", "never again"]
    neither = client.post(ROUTE, json={"bank": "x"})
    both = client.post(ROUTE, json={"bank": "x", "path": str(outputs[0]), "image": b64(b"x")})
    assert [neither.status_code, both.status_code] == [400, 400]
    assert "exactly one of path and image" in neither.json()["detail"]["error"]


def test_an_enforced_bank_is_refused_and_left_as_it_was(tmp_path):
    session, _, client, outputs = start(tmp_path, enforced_setting=["guarded"])
    session.build_bank("guarded", [outputs[0]])
    before = bank_file(session, "guarded").read_bytes()
    for name in ("guarded", "GUARDED"):
        refused = client.post(ROUTE, json={"bank": name, "path": str(outputs[1])})
        assert refused.status_code == 403 and "enforced" in refused.json()["detail"]
    assert bank_file(session, "guarded").read_bytes() == before


@pytest.mark.parametrize("where", ["outside", "dot-dot", "link"])
def test_a_path_outside_the_output_folders_is_refused_unread(tmp_path, where):
    session, _, client, outputs = start(tmp_path)
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(outputs[0].read_bytes())
    path = {"outside": str(secret),
            "dot-dot": str(outputs[0].parent / ".." / ".." / "elsewhere" / "secret.png"),
            "link": str(outputs[0].parent / "link.png")}[where]
    if where == "link":  # a link inside the folder that leads out of it
        Path(path).symlink_to(secret)
    refused = client.post(ROUTE, json={"bank": "avoid", "path": path})
    assert refused.status_code == 400
    assert "not an image this WebUI wrote" in refused.json()["detail"]["error"]
    assert session.backend.store().names() == []


def test_a_corrupt_or_repeated_image_gets_a_clear_error_and_loses_nothing(tmp_path):
    session, _, client, outputs = start(tmp_path)
    session.build_bank("avoid", [outputs[0]])
    before = bank_file(session, "avoid").read_bytes()
    truncated, _ = write_broken(outputs[0].parent)["truncated.jpg"]
    for bank in ("avoid", "fresh"):
        broken = client.post(ROUTE, json={"bank": bank, "path": str(truncated)})
        assert broken.status_code == 400
        assert broken.json()["detail"]["error"].startswith("truncated.jpg cannot be used (truncated")
        assert broken.json()["detail"]["report"]["counts"] == {"truncated": 1}
    again = client.post(ROUTE, json={"bank": "avoid", "path": str(outputs[0])})
    assert again.status_code == 400 and "already in bank 'avoid'" in again.json()["detail"]["error"]
    assert bank_file(session, "avoid").read_bytes() == before
    assert session.backend.store().names() == ["avoid"]


def test_a_reference_bank_is_refused(tmp_path):
    session, negator, client, outputs = start(tmp_path)
    session.backend.store().build([outputs[0]], session.backend.encoder(), "ordinary", role="reference")
    before = bank_file(session, "ordinary").read_bytes()
    refused = client.post(ROUTE, json={"bank": "ordinary", "path": str(outputs[1])})
    assert refused.status_code == 400 and "is a reference bank" in refused.json()["detail"]["error"]
    assert bank_file(session, "ordinary").read_bytes() == before
    assert negator.choices()["banks"] == []  # nor is it offered


def test_a_server_reachable_from_other_machines_needs_api_auth(tmp_path):
    session, _, client, outputs = start(tmp_path, disable_extension_access=True)
    refused = client.post(ROUTE, json={"bank": "avoid", "path": str(outputs[0])})
    assert refused.status_code == 403 and "--api-auth" in refused.json()["detail"]
    assert session.backend.store().names() == []


def test_the_gallery_event_adds_the_selected_image_and_answers_in_the_page(tmp_path):
    session, negator, _, outputs = start(tmp_path, default_banks=["enforced one", "avoid"],
                                         enforced_setting=["enforced one"])
    session.build_bank("avoid", [outputs[0]])
    session.build_bank("enforced one", [outputs[0]])
    choices = negator.choices()
    assert choices == {"banks": [{"name": "avoid", "count": 1}], "default": "avoid"}
    # gradio 3.41 (AUTOMATIC1111) hands the gallery over as dicts naming the served file, ?mtime appended
    gallery = [{"name": f"{path}?1700000000.0", "data": None, "is_file": True} for path in outputs]
    answer = negator.from_gallery(json.dumps({"index": 2, "bank": "avoid"}), gallery)
    assert "Added 00002-2.png to the negation bank" in answer and "now holds 2 images" in answer
    assert session.backend.store().entry("avoid").meta.count == 2
    # gradio 4 (Forge, type="pil") hands over (image, caption) pairs it loaded itself; the new bank is proposed
    pil_gallery = [(Image.open(outputs[1]), None)]
    answer = negator.from_gallery(json.dumps({"index": 0, "bank": "second"}), pil_gallery)
    assert 'a new negation bank "second"' in answer and "1 image." in answer
    assert negator.choices()["default"] == "second"
    assert negator.from_gallery(json.dumps({"cancelled": True}), gallery) == ""
    unselected = negator.from_gallery(json.dumps({"index": -1, "bank": ""}), gallery)
    assert "select an image in the gallery first" in unselected and "safe-denoiser-error" in unselected
    assert "the gallery is empty" in negator.from_gallery(json.dumps({"index": -1, "bank": ""}), [])
    forged = negator.from_gallery(json.dumps({"index": 0, "bank": "avoid"}), [{"name": "/etc/passwd"}])
    assert "not an image this WebUI wrote" in forged
    enforced = negator.from_gallery(json.dumps({"index": 0, "bank": "enforced one"}), gallery[1:2])
    assert "Not added" in enforced and "enforced" in enforced
    assert session.backend.store().entry("avoid").meta.count == 2


def test_the_button_sits_in_the_send_to_row_of_txt2img_and_img2img(tmp_path, stub_callbacks):
    """The page as modules/ui_common.py ``create_output_panel`` builds it, with the WebUI's patched gradio
    calling the after-component callbacks (modules/gradio_extensons.py)."""
    import gradio as gr
    from modules.ui_components import ToolButton

    start(tmp_path)
    load_tab_script()

    def created(component, **kwargs):
        stub_callbacks.after_component_callback(component, **kwargs)
        return component

    with gr.Blocks() as page:
        for tab in ("txt2img", "img2img"):
            with gr.Column():
                created(gr.Gallery(elem_id=f"{tab}_gallery"), elem_id=f"{tab}_gallery")
                with gr.Row(elem_id=f"image_buttons_{tab}") as row:
                    for target in ("img2img", "inpaint", "extras"):
                        created(ToolButton("x", elem_id=f"{tab}_send_to_{target}"), elem_id=f"{tab}_send_to_{target}")
                created(gr.HTML(elem_id=f"html_log_{tab}"), elem_id=f"html_log_{tab}")
            button = next(child for child in row.children if child.elem_id == f"safe_denoiser_{tab}_negate_image")
            assert row.children.index(button) == 3 and "tool" in button.elem_classes
    config = page.get_config_file()
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    scripts = {(ids.get(d["targets"][0][0] if isinstance(d["targets"][0], list) else d["targets"][0]), d["js"])
               for d in config["dependencies"]}
    assert ("safe_denoiser_txt2img_negate_image", None) in scripts
    assert sum(js == "safeDenoiserNegateImage" for _, js in scripts) == 2
