"""The accordion and the tab in headless Chromium (Debian's, through Playwright), on a real gradio 3.41 page.

One page serves the whole module. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from lib_safedenoise.banks import fileformat
from tests.browser import ui_session
from tests.images import write_broken, write_photos

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
TIMEOUT_MS = 60_000  # a first run on a busy 2-core CI machine is slow; passing runs never wait this long

if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")
sync_api.expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    from tests.browser import app

    folder = tmp_path_factory.mktemp("browser")
    # gradio files uploads by content hash under its temporary folder: a private one keeps concurrent test
    # runs from sharing (and deleting) each other's uploads
    previous_temp_dir = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
    # and our own temporary files (exports) go to a folder of this module's own, to be checked
    previous_tempdir = tempfile.tempdir
    tempfile.tempdir = str(folder / "tmp")
    Path(tempfile.tempdir).mkdir()
    session = ui_session.start(folder)
    photos = write_photos(folder / "photos")
    session.build_bank("photos", [(n, p.read_bytes()) for n, p in list(photos.items())[:2]])
    page_app, url = app.launch(session.backend, ui_session.sample_report())
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#safe_denoiser_txt2img-visible-checkbox")
        yield page, session, folder, photos
        browser.close()
    page_app.close()
    tempfile.tempdir = previous_tempdir
    if previous_temp_dir is None:
        os.environ.pop("GRADIO_TEMP_DIR")
    else:
        os.environ["GRADIO_TEMP_DIR"] = previous_temp_dir


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def script_args(page) -> list:
    """Run the page's stand-in generation; the arguments our script would get, as the server parsed them."""
    received = page.locator("#txt2img_script_args textarea")
    before = received.input_value()
    page.click("#txt2img_generate")
    sync_api.expect(received).not_to_have_value(before)
    return json.loads(received.input_value())["args"]


def test_toggle_choose_a_bank_and_set_its_strength(webui):
    page, session, _, _ = webui
    assert script_args(page)[0] is False
    page.click("#safe_denoiser_txt2img-visible-checkbox")  # enables without opening, as in the WebUI
    assert script_args(page)[0] is True
    page.click("#safe_denoiser_txt2img .label-wrap")  # open it to choose a bank
    sync_api.expect(page.locator("#safe_denoiser_txt2img_banks")).to_be_visible()
    page.click("#safe_denoiser_txt2img_banks input")
    page.locator("#safe_denoiser_txt2img_banks ul.options li", has_text="photos").click()
    page.click("#txt2img_prompt textarea")  # close the option list
    slider = page.locator("#safe_denoiser_txt2img_strength_0")
    sync_api.expect(slider).to_be_visible()
    sync_api.expect(slider).to_contain_text("Strength: photos")
    slider.locator("input[type=number]").fill("0.5")
    slider.locator("input[type=number]").press("Enter")
    assert page.locator("#safe_denoiser_txt2img-visible-checkbox").get_attribute("title")  # hints are set
    shot(page, "accordion_enabled")
    enabled, banks, strengths, *_ = script_args(page)
    assert (enabled, banks, strengths) == (True, ["photos"], "0.5")
    sync_api.expect(page.locator("#safe_denoiser_txt2img_status").first).to_contain_text("image 1: steps 1-2, hires 1")
    shot(page, "accordion_status_after_run")
    page.click("#safe_denoiser_txt2img-visible-checkbox")
    assert script_args(page)[0] is False


def hold_uploads(page):
    """Hold every /upload request the page sends (as a slow connection would) until released."""
    held = []
    page.route("**/upload", lambda route: held.append(route))
    return held


def choose_images(page, paths) -> None:
    with page.expect_request("**/upload"):
        page.set_input_files("#safe_denoiser_tab_files input[type=file]", [str(p) for p in paths])


def test_status_refresh_waits_for_the_upload(webui):
    """The status line refreshes after a generation, but not while the tab uploads images: an event finishing
    during an upload makes gradio 3.41 drop it. The refresh goes out once the upload is through."""
    page, _, _, photos = webui
    page.click("#tabs button:has-text('Safe Denoiser')")
    uploads = page.locator("#safe_denoiser_tab_files")
    page.evaluate("window.statusRefreshes = 0; document.querySelector('#safe_denoiser_txt2img_status_refresh')"
                  ".addEventListener('click', () => window.statusRefreshes++)")
    held = hold_uploads(page)
    try:
        choose_images(page, [photos["coffee.jpg"]])
        sync_api.expect(uploads).to_contain_text("Uploading")
        # counted from here, while the upload is in flight (a refresh due from earlier, late on a loaded
        # machine, went out before it and says nothing)
        page.evaluate("window.statusRefreshes = 0")
        page.evaluate("document.querySelector('#html_info_txt2img').append('generation finished')")
        page.wait_for_timeout(1500)  # the refresh is due 300 ms after the WebUI's info changes
        during_upload = page.evaluate("window.statusRefreshes")
    finally:
        for route in held:  # release the upload whatever happened, so the next tests find the tab usable
            route.continue_()
        page.unroute("**/upload")
    assert during_upload == 0
    sync_api.expect(uploads.locator("tr.file td.download a")).to_have_count(1, timeout=30_000)
    page.wait_for_function("window.statusRefreshes === 1")
    page.wait_for_timeout(1000)  # and only once
    assert page.evaluate("window.statusRefreshes") == 1
    page.click("#safe_denoiser_tab_files button[aria-label=Clear]")
    sync_api.expect(uploads).not_to_contain_text("coffee.jpg")


def test_a_lost_upload_is_reported(webui):
    """An event finishing during an upload (here the bank list's Refresh) makes gradio 3.41 drop the upload: its
    files stay "Uploading..." for good. Build stays disabled and the tab says to choose the images again, which
    then works."""
    page, _, _, photos = webui
    page.click("#tabs button:has-text('Safe Denoiser')")
    uploads = page.locator("#safe_denoiser_tab_files")
    build = page.locator("#safe_denoiser_tab_build")
    lost = page.locator("#safe_denoiser_tab_upload_lost")
    held = hold_uploads(page)
    try:
        choose_images(page, [photos["coffee.jpg"]])
        with page.expect_websocket() as queued:  # a queued event: its own websocket, closed once it finished
            page.click("#safe_denoiser_tab_refresh")
        if not queued.value.is_closed():
            queued.value.wait_for_event("close")
        held[0].continue_()
    finally:
        page.unroute("**/upload")
    sync_api.expect(lost).to_contain_text("This upload was lost")
    sync_api.expect(build).to_be_disabled()
    assert build.get_attribute("title").startswith("This upload was lost")
    assert uploads.locator("tr.file td.download a").count() == 0
    shot(page, "tab_upload_lost")
    page.click("#safe_denoiser_tab_files button[aria-label=Clear]")
    sync_api.expect(lost).to_have_text("")
    sync_api.expect(build).to_be_enabled()
    choose_images(page, [photos["coffee.jpg"]])
    sync_api.expect(uploads.locator("tr.file td.download a")).to_have_count(1)
    sync_api.expect(lost).to_have_text("")
    page.click("#safe_denoiser_tab_files button[aria-label=Clear]")
    sync_api.expect(uploads).not_to_contain_text("coffee.jpg")


def test_build_a_bank_from_uploads_with_a_broken_file(webui):
    """Build waits for the upload: while the browser is still sending the files (held here, as a slow
    connection or a busy server would), each is listed as "Uploading..." and Build is disabled; once every
    file shows its size, Build is enabled and builds from the whole files."""
    page, session, folder, photos = webui
    broken = write_broken(folder / "broken")
    page.click("#tabs button:has-text('Safe Denoiser')")
    page.fill("#safe_denoiser_tab_name input", "uploaded")
    files = [photos["astronaut.png"], photos["coffee.jpg"], broken["truncated.jpg"][0], photos["chelsea.webp"]]
    uploads = page.locator("#safe_denoiser_tab_files")
    build = page.locator("#safe_denoiser_tab_build")
    held = hold_uploads(page)
    try:
        choose_images(page, files)
        sync_api.expect(uploads).to_contain_text("truncated.jpg")
        sync_api.expect(uploads).to_contain_text("Uploading")
        sync_api.expect(build).to_be_disabled()
        assert build.get_attribute("title").startswith("Waiting for the images")
        shot(page, "tab_build_waits_for_the_upload")
        assert len(held) == 1
        held[0].continue_()
    finally:
        page.unroute("**/upload")
    sync_api.expect(uploads.locator("tr.file td.download a")).to_have_count(len(files))  # sizes shown: sent
    sync_api.expect(build).to_be_enabled()
    page.click("#safe_denoiser_tab_build")
    sync_api.expect(page.locator("#safe_denoiser_tab_progress").first).to_contain_text("4 / 4 files")
    report = page.locator("#safe_denoiser_tab_report").first
    sync_api.expect(report).to_contain_text("Bank uploaded")
    assert report.locator("tr.safe-denoiser-file-added").count() == 3
    sync_api.expect(report.locator("tr.safe-denoiser-file-truncated")).to_contain_text("truncated.jpg")
    sync_api.expect(page.locator("#safe_denoiser_tab_table")).to_contain_text("uploaded")
    sync_api.expect(page.locator("#safe_denoiser_tab_files")).not_to_contain_text("truncated.jpg")  # consumed
    shot(page, "tab_built_bank")
    assert session.backend.store().names() == ["photos", "uploaded"]


def test_export_hands_over_the_whole_bank_and_keeps_no_copy(webui):
    page, session, folder, _ = webui
    page.click("#tabs button:has-text('Safe Denoiser')")
    page.click("#safe_denoiser_tab_selected input")
    page.locator("#safe_denoiser_tab_selected ul.options li", has_text="uploaded").click()
    page.click("#safe_denoiser_tab_export")
    message = page.locator("#safe_denoiser_tab_message").first
    sync_api.expect(message).to_contain_text("Exported uploaded.safetensors")
    link = page.locator("#safe_denoiser_tab_download a")
    with page.expect_download() as download:
        link.click()
    received = folder / "downloaded" / "uploaded.safetensors"
    download.value.save_as(received)
    assert fileformat.verify_bank(received).ok
    assert fileformat.read_metadata(received).count == 3
    # the export event has finished (its status overlay is hidden): our temporary copy is gone
    sync_api.expect(message.locator(".wrap").first).to_have_class(re.compile(r"\bhide\b"))
    assert list(Path(tempfile.gettempdir()).glob("safe-denoiser-export-*")) == []
    shot(page, "tab_exported")


def test_delete_asks_first(webui):
    page, session, _, _ = webui
    page.click("#tabs button:has-text('Safe Denoiser')")
    page.click("#safe_denoiser_tab_selected input")
    page.locator("#safe_denoiser_tab_selected ul.options li", has_text="photos").click()
    sync_api.expect(page.locator("#safe_denoiser_tab_card").first).to_contain_text("2 images")
    dialogs = []

    def answer(dialog, accept):
        dialogs.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda dialog: answer(dialog, False))
    page.click("#safe_denoiser_tab_delete")
    sync_api.expect(page.locator("#safe_denoiser_tab_message").first).to_contain_text("not confirmed")
    assert "photos" in session.backend.store().names()
    page.once("dialog", lambda dialog: answer(dialog, True))
    page.click("#safe_denoiser_tab_delete")
    sync_api.expect(page.locator("#safe_denoiser_tab_message").first).to_contain_text("Deleted photos")
    assert len(dialogs) == 2 and 'Delete the bank "photos"?' in dialogs[0]
    assert session.backend.store().names() == ["uploaded"]
    sync_api.expect(page.locator("#safe_denoiser_tab_table")).not_to_contain_text("photos")
    sync_api.expect(page.locator("#safe_denoiser_tab_card").first).to_have_text("")  # no bank selected
    shot(page, "tab_after_delete")


def test_gate_plot_of_the_last_generation(webui):
    page, _, _, _ = webui
    page.click("#tabs button:has-text('Safe Denoiser')")
    page.click("#safe_denoiser_tab_plot_section .label-wrap")
    page.click("#safe_denoiser_tab_plot_refresh")
    sync_api.expect(page.locator("#safe_denoiser_tab_plot img")).to_be_visible()
    shot(page, "tab_gate_plot")


def test_enforced_bank_is_shown_and_kept(webui):
    page, session, _, _ = webui
    session.shared.cmd_opts.safe_denoiser_enforce = "uploaded"  # as if launched with --safe-denoiser-enforce
    try:
        page.click("#tabs button:has-text('Safe Denoiser')")
        page.click("#safe_denoiser_tab_refresh")
        sync_api.expect(page.locator("#safe_denoiser_tab_enforced").first).to_contain_text(
            "Enforced on this server: uploaded")
        page.click("#safe_denoiser_tab_selected input")
        page.locator("#safe_denoiser_tab_selected ul.options li", has_text="uploaded").click()
        sync_api.expect(page.locator("#safe_denoiser_tab_card").first).to_contain_text("enforced on this server")
        sync_api.expect(page.locator("#safe_denoiser_tab_delete")).to_be_disabled()
        sync_api.expect(page.locator("#safe_denoiser_tab_rename")).to_be_disabled()
        assert session.backend.store().names() == ["uploaded"]
        shot(page, "tab_enforced")
    finally:
        session.shared.cmd_opts.safe_denoiser_enforce = None
