""""Negate this image" in headless Chromium on the stand-in page (app.py: the output panel as the WebUI builds it).

Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import pytest

from tests.browser.test_browser_ui import script_args, shot, sync_api, webui  # noqa: F401 (webui: a fixture)

pytestmark = pytest.mark.browser


def negate(page, answer: str | None) -> list[tuple[str, str]]:
    """Click the button and answer its question (None: cancel, "": accept the proposed bank); the questions
    the page asked, with the bank each proposed."""
    questions = []

    def reply(dialog):
        questions.append((dialog.message, dialog.default_value))
        if answer is None:
            dialog.dismiss()
        else:
            dialog.accept(answer or dialog.default_value)

    page.once("dialog", reply)
    page.click("#safe_denoiser_txt2img_negate_image")
    return questions


def test_the_button_adds_the_shown_image_after_asking_once(webui):
    page, session, _, _ = webui
    buttons = page.locator("#image_buttons_txt2img button")
    assert [buttons.nth(i).get_attribute("id") for i in range(buttons.count())] == [
        "txt2img_send_to_img2img", "txt2img_send_to_inpaint", "txt2img_send_to_extras",
        "safe_denoiser_txt2img_negate_image"]
    log = page.locator("#html_log_txt2img").first
    asked = []  # nothing generated yet: nothing to ask about, and the answer says so

    def unexpected(dialog):
        asked.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", unexpected)
    page.click("#safe_denoiser_txt2img_negate_image")
    sync_api.expect(log).to_contain_text("the gallery is empty")
    page.remove_listener("dialog", unexpected)
    assert asked == []
    script_args(page)
    page.locator("#txt2img_gallery img").first.wait_for()
    questions = negate(page, None)
    page.wait_for_timeout(1500)
    assert len(questions) == 1 and session.backend.store().names() == ["photos"]
    assert "photos (2)" in questions[0][0] and questions[0][1] == "negated images"
    questions = negate(page, "seen on the page")
    sync_api.expect(log).to_contain_text('a new negation bank "seen on the page": it now holds 1 image')
    shot(page, "negate-this-image")
    assert len(questions) == 1
    assert session.backend.store().load("seen on the page").role == "negation"
    # the next question proposes that bank; the same image again changes nothing and says so
    questions = negate(page, "")
    sync_api.expect(log).to_contain_text("already in bank 'seen on the page'")
    assert [default for _, default in questions] == ["seen on the page"]
    assert session.backend.store().entry("seen on the page").meta.count == 1
