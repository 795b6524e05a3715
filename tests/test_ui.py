"""The accordion and the tab with real gradio 3.41 on the host stub: layout contract, handlers, files on disk."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from lib_safedenoise.webui import accordion, api, prompt_bank, tab
from lib_safedenoise.webui.args import ARG_NAMES, GenerationArgs, parse_setting
from tests.browser import ui_session
from tests.images import write_broken, write_photos


@pytest.fixture
def session(tmp_path):
    return ui_session.start(tmp_path)


def uploads_of(paths):
    """What gradio 3.41 hands a ``gr.File(type="file")`` handler: wrappers whose ``name`` is the upload's path."""
    class Upload:
        def __init__(self, path):
            self.name = str(path)
    return [Upload(p) for p in paths]


def photo_bank(session, tmp_path, name="photos"):
    photos = write_photos(tmp_path / "photos")
    return session.build_bank(name, [(n, p.read_bytes()) for n, p in list(photos.items())[:3]])


def test_accordion_returns_the_script_arguments_in_order_with_defaults_from_settings(tmp_path):
    session = ui_session.start(tmp_path, default_enabled=True, default_banks=["photos", "gone"])
    photo_bank(session, tmp_path)
    with gr.Blocks():
        controls = accordion.build_accordion(False, session.backend)
    from modules.ui_components import InputAccordion

    assert len(controls.components) == len(ARG_NAMES)
    enabled, banks, strengths, mode, bandwidth, start, end, threshold = controls.components
    assert isinstance(enabled, InputAccordion) and enabled.value is True
    assert enabled.accordion_id == "safe_denoiser_txt2img"
    assert banks.choices == ["photos"] and banks.value == ["photos"]  # a missing default bank is dropped
    assert "default" in mode.choices and "contrastive" in mode.choices
    values = [c.value for c in controls.components]
    parsed = GenerationArgs.from_script_args(values)
    assert parsed == GenerationArgs(enabled=True, banks=("photos",), strengths=(1.0,))


def test_accordion_controls_span_exactly_what_the_arguments_accept(session):
    """Each slider (and the bandwidth field's minimum) covers the field's valid range and no more: its ends
    parse, one step beyond them is refused."""
    with gr.Blocks():
        controls = accordion.build_accordion(False, session.backend)
    _, _, _, _, bandwidth, start, end, _ = controls.components
    sliders = {"strengths": controls.strength_sliders[0], "window_start": start, "window_end": end}
    for name, control in sliders.items():
        for inside in (control.minimum, control.maximum):
            parse_setting(name, inside)
        for outside in (control.minimum - control.step, control.maximum + control.step):
            with pytest.raises(ValueError, match=name):
                parse_setting(name, outside)
    assert parse_setting("bandwidth", bandwidth.minimum) == bandwidth.minimum
    with pytest.raises(ValueError, match="bandwidth"):
        parse_setting("bandwidth", bandwidth.minimum - 0.01)


def test_building_the_accordion_changes_nothing(session, tmp_path):
    from modules import script_callbacks

    photo_bank(session, tmp_path)
    before = (sorted(os.listdir(session.bank_dir)), dict(session.shared.opts.data),
              {k: len(v) for k, v in script_callbacks.callback_map.items()})
    for is_img2img in (False, True, False):
        with gr.Blocks():
            accordion.build_accordion(is_img2img, session.backend)
    after = (sorted(os.listdir(session.bank_dir)), dict(session.shared.opts.data),
             {k: len(v) for k, v in script_callbacks.callback_map.items()})
    assert after == before


def test_strength_sliders_follow_the_selected_banks_and_keep_extra_strengths():
    strengths, *sliders = accordion.sync_strength_sliders(["a", "b"], "0.5")
    assert strengths == "0.5, 0.5"
    assert [s["visible"] for s in sliders] == [True, True] + [False] * (accordion.MAX_STRENGTH_SLIDERS - 2)
    assert sliders[1]["label"] == "Strength: b" and sliders[1]["value"] == 0.5
    banks = [f"b{i}" for i in range(accordion.MAX_STRENGTH_SLIDERS + 2)]
    text = ", ".join(str(i / 10) for i in range(len(banks)))
    moved = accordion.set_strength(1, banks, text, 2.5)
    expected = [i / 10 for i in range(len(banks))]
    expected[1] = 2.5
    assert GenerationArgs.from_script_args([True, banks, moved]).strengths == tuple(expected)


def test_status_line_names_images_and_steps():
    line = accordion.status_html(ui_session.sample_report())
    assert "image 1: steps 1-2, hires 1" in line and "image 2: not fired" in line
    assert accordion.status_html({}) == ""
    problems = accordion.status_html({"images": {}, "problems": ["bank x is missing"]})
    assert "did not run" in problems and "1 problem" in problems and "bank x is missing" in problems


def test_gate_plot_draws_one_line_per_image_per_pass(tmp_path):
    figure = tab.gate_plot(ui_session.sample_report())
    first, hires = figure.axes
    assert [line.get_label() for line in first.get_lines()] == ["image 1", "image 2"]
    assert list(first.get_lines()[0].get_ydata())[:3] == [0.9, 0.4, 0.0]
    assert all(math.isnan(v) for v in first.get_lines()[0].get_ydata()[3:])  # outside the window
    assert [line.get_label() for line in hires.get_lines()] == ["image 1"]
    figure.savefig(tmp_path / "plot.png")
    assert Image.open(tmp_path / "plot.png").size[0] > 300
    assert tab.gate_plot({}) is None


def test_build_streams_progress_reports_every_file_and_deletes_the_uploads(session, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # gradio's cache of uploads, private here
    photos = write_photos(tmp_path / "upload")
    broken = write_broken(tmp_path / "upload")
    paths = [photos["astronaut.png"], broken["truncated.jpg"][0], photos["coffee.jpg"], broken["notes.png"][0]]
    handlers = tab.TabHandlers(api.BankService(session.backend))
    locked = []
    build = session.backend.store().build

    def watching_build(*args, progress, **kwargs):  # the real build, noting whether the queue lock is held
        return build(*args, progress=lambda *p: (locked.append(session.queue_lock.locked()), progress(*p)),
                     **kwargs)
    session.backend.store().build = watching_build
    uploads = gr.File(file_count="multiple").preprocess([{"name": str(p), "data": None, "is_file": True}
                                                         for p in paths])  # what the handler receives
    temporary = [Path(u.name) for u in uploads] + [Path(u.file.name) for u in uploads]
    assert all(t.exists() for t in temporary) and not set(temporary) & set(paths)
    updates = list(handlers.build(uploads, "", "mixed", False, "negation", False, "Mixed", "", "", "", ""))
    progress, report, rows, dropdown, upload_field = updates[-1]
    assert locked and all(locked)
    assert "4 / 4 files" in progress
    assert report.count("<tr class=") == 4
    for name, status in [("astronaut.png", "added"), ("truncated.jpg", "truncated"), ("notes.png", "not-an-image")]:
        assert f"<td>{name}</td><td>{status}</td>" in report
    assert "Bank mixed" in report and "2 images" in report
    assert [row[0] for row in rows] == ["mixed"] and dropdown["value"] == "mixed" and upload_field is None
    assert not any(t.exists() for t in temporary)  # the uploads' copies, not the user's files
    assert session.backend.store().inspect("mixed")["title"] == "Mixed"


def test_build_refuses_missing_names_both_sources_and_server_folders_when_hidden(tmp_path):
    session = ui_session.start(tmp_path, hide_ui_dir_config=True)
    handlers = tab.TabHandlers(api.BankService(session.backend))
    photos = write_photos(tmp_path / "folder")
    (_, first, *_), = list(handlers.build([], "", "x", False, "negation", False, *[""] * 5))
    assert "Give the bank a name" not in first and "Upload images or name a server folder" in first
    (_, report, *_), = list(handlers.build([], str(tmp_path / "folder"), "x", False, "negation", False, *[""] * 5))
    assert "reading server folders is disabled" in report
    (_, report, *_, upload_field), = list(handlers.build(uploads_of([photos["coffee.jpg"]]), str(tmp_path / "folder"),
                                                          "x", False, "negation", False, *[""] * 5))
    assert "not both" in report and upload_field == gr.update() and photos["coffee.jpg"].exists()
    assert session.backend.store().names() == []
    tab_blocks = tab.build_tab(session.backend)  # on_ui_tabs runs before the page's own Blocks opens
    folder = next(b for b in tab_blocks.blocks.values() if getattr(b, "elem_id", None) == "safe_denoiser_tab_folder")
    assert folder.visible is False


def test_listen_without_insecure_access_also_hides_the_folder_input(tmp_path):
    session = ui_session.start(tmp_path, disable_extension_access=True)
    assert session.backend.folder_inputs_allowed() is False
    assert ui_session.start(tmp_path).backend.folder_inputs_allowed() is True


def test_listing_shows_card_size_space_and_compatibility(session, tmp_path):
    photo_bank(session, tmp_path)
    handlers = tab.TabHandlers(api.BankService(session.backend))
    rows, _, _ = handlers.listing()
    assert rows[0][:4] == ["photos", "photos", 3, "test (4x4x4)"] and rows[0][5] == "no model loaded"
    session.load_model("sd1")
    rows, _, _ = handlers.listing()
    assert rows[0][5].startswith("no: ") and "SD1" in rows[0][5]
    session.load_model("test")
    rows, _, _ = handlers.listing()
    assert rows[0][5] == "yes"
    card, delete, rename = handlers.select("photos")
    assert "3 images" in card and delete["interactive"] and rename["interactive"]


def test_delete_needs_confirmation_and_enforced_banks_stay(tmp_path):
    session = ui_session.start(tmp_path, enforce="guarded")
    photo_bank(session, tmp_path, "photos")
    photo_bank(session, tmp_path, "guarded")
    handlers = tab.TabHandlers(api.BankService(session.backend))
    message, *_ = handlers.delete("photos", False)
    assert "not confirmed" in message and (session.bank_dir / "photos.safetensors").exists()
    message, rows, _, _ = handlers.delete("guarded", True)
    assert "enforced" in message and (session.bank_dir / "guarded.safetensors").exists()
    message, *_ = handlers.rename("guarded", "other")
    assert "enforced" in message and (session.bank_dir / "guarded.safetensors").exists()
    message, *_ = handlers.rename("photos", "guarded")
    assert "enforced" in message
    message, rows, _, _ = handlers.delete("photos", True)
    assert message.endswith("Deleted photos.</div>") and [r[0] for r in rows] == ["guarded"]
    assert [r[6] for r in rows] == ["yes"]
    card, delete, rename = handlers.select("guarded")
    assert "enforced on this server" in card and not delete["interactive"] and not rename["interactive"]
    tab_blocks = tab.build_tab(session.backend)
    banner = next(b for b in tab_blocks.blocks.values() if getattr(b, "elem_id", None) == "safe_denoiser_tab_enforced")
    assert "guarded" in banner.value and "cannot be deleted" in banner.value
    with gr.Blocks() as page:
        accordion.build_accordion(True, session.backend)
    note = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "safe_denoiser_img2img_enforced")
    assert "guarded" in note.value
    replaced = list(handlers.build(uploads_of([write_photos(tmp_path / "again")["coffee.jpg"]]), "", "guarded",
                                   True, "negation", False, *[""] * 5))[-1]
    assert "enforced" in replaced[1]


def gradio_download(updates, cache: Path) -> Path:
    """Run an export handler as gradio does: take its update, copy the file it names into gradio's cache
    (``File.postprocess``), then ask for the next update. The handler's own copy is gone afterwards."""
    download, message = next(updates)
    assert "Exported" in message
    exported = Path(download["value"])
    cache.mkdir(exist_ok=True)
    copy = Path(shutil.copy(exported, cache))
    assert next(updates, None) is None
    assert not exported.exists() and not exported.parent.exists()
    return copy


def test_export_then_import_shows_the_card_before_installing(session, tmp_path):
    photo_bank(session, tmp_path)
    service = api.BankService(session.backend)
    handlers = tab.TabHandlers(service)
    session.backend.store().save_settings("photos", None, description="cats to avoid", license="CC0")
    exported = gradio_download(handlers.export("photos", False), tmp_path / "gradio-cache")
    assert exported.name == "photos.safetensors"
    handlers.delete("photos", True)
    assert not any(session.bank_dir.iterdir())
    card, install = handlers.read_preset(exported)
    assert "cats to avoid" in card and "CC0" in card and install["interactive"] is True
    assert not any(session.bank_dir.iterdir())  # reading the card installs nothing
    message, rows, _, _, install = handlers.install_preset(exported, "restored", False, None)
    assert "Installed restored" in message and [r[0] for r in rows] == ["restored"]
    settings_file = gradio_download(handlers.export("restored", True), tmp_path / "gradio-cache")
    assert settings_file.name == "restored.preset.json"
    assert json.loads(settings_file.read_text())["card"]["description"] == "cats to avoid"
    bad, install = handlers.read_preset(tmp_path / "photos" / "astronaut.png")
    assert "safe-denoiser-error" in bad and install["interactive"] is False


def test_inspect_and_plot_handlers(tmp_path):
    session = ui_session.start(tmp_path, last_report=ui_session.sample_report())
    photo_bank(session, tmp_path)
    handlers = tab.TabHandlers(api.BankService(session.backend))
    details, _ = handlers.inspect("photos")
    assert details["visible"] and details["value"]["metadata"]["latent_space"] == "test"
    figure, note = handlers.plot()
    assert figure is not None and note == ""
    ui_session.start(tmp_path)
    figure, note = handlers.plot()
    assert figure is None and "No generation" in note


def test_every_visible_control_has_a_hint(session):
    import re

    script = (Path(__file__).resolve().parents[1] / "javascript" / "safe_denoiser.js").read_text()
    hinted = set(re.findall(r'^\s*"(_\w*)":', script, re.MULTILINE))
    with gr.Blocks() as page:
        accordion.build_accordion(False, session.backend)
    tab_blocks = tab.build_tab(session.backend)
    def is_control(block) -> bool:
        if isinstance(block, gr.File):
            return block.interactive is not False
        display = (gr.HTML, gr.Markdown, gr.JSON, gr.Plot)
        return (isinstance(block, (gr.Button, gr.components.IOComponent)) and not isinstance(block, display)
                and block.visible is not False)
    controls = [b for blocks in (page.blocks, tab_blocks.blocks) for b in blocks.values() if is_control(b) and b.elem_id]
    suffixes = {re.sub(r"_\d+$", "", b.elem_id.removeprefix("safe_denoiser_txt2img").removeprefix("safe_denoiser_tab"))
                for b in controls}
    assert "_build" in suffixes and "_banks" in suffixes and "_files" in suffixes
    assert suffixes - hinted == set()


SAMPLING = ("Euler", 6, 2.0, 0.5, 0, 0, 5)  # the "Sampling" accordion: sampler, steps, CFG, share at CFG 1,
# width, height, seed


def test_build_from_a_prompt_streams_sample_progress_and_lists_the_new_bank(tmp_path):
    from tests.host_stub import webui_fixtures as wf

    webui = wf.start(tmp_path)
    handlers = tab.TabHandlers(api.BankService(api.Backend.from_host()))
    updates = list(handlers.build_from_prompt("3", "", 3, "negation", "threes", False, *SAMPLING, "Threes", *[""] * 4))
    progress, report, rows, dropdown = updates[-1]
    assert "3 / 3 samples" in progress and "Bank threes" in report and "3 images" in report and "<table" not in report
    assert sorted(row[0] for row in rows) == [wf.BANK, "threes"] and dropdown["value"] == "threes"
    meta = api.BankService(api.Backend.from_host()).inspect("threes")["metadata"]
    assert meta["title"] == "Threes" and meta["generation"]["prompt"] == "3" and meta["generation"]["samples"] == 3
    assert (meta["generation"]["steps"], meta["generation"]["seed"], meta["generation"]["cfg_scale"]) == (6, 5, 2.0)
    assert meta["generation"]["unguided_samples"] == 2  # round(3 * 0.5)
    (_, refused, *_), = list(handlers.build_from_prompt("3", "", 0, "negation", "none", False, *SAMPLING, *[""] * 5))
    assert "samples must be a whole number from 1" in refused
    *_, (_, exists, _, _) = list(handlers.build_from_prompt("3", "", 1, "negation", "threes", False, *SAMPLING, *[""] * 5))
    assert "already exists" in exists and "safe-denoiser-error" in exists
    # the one-click reference: the generic prompts, which the digits checkpoint cannot read (its prompts are
    # digit labels), so the first is refused by name and nothing is written
    *_, (_, generic, _, _) = list(handlers.build_own_reference(False, *SAMPLING, *[""] * 5))
    assert prompt_bank.GENERIC_PROMPTS[0] in generic and "safe-denoiser-error" in generic
    assert sorted(p.name for p in webui.bank_dir.iterdir()) == [f"{wf.BANK}.safetensors", "threes.safetensors"]


def test_reference_from_the_outputs_folder_reads_its_dated_sub_folders(session, tmp_path):
    from modules import shared

    outputs = tmp_path / "outputs" / "txt2img-images"
    write_photos(outputs / "2026-11-29")
    write_photos(outputs / "2026-11-30")
    shared.opts.data["outdir_txt2img_samples"] = str(outputs)
    shared.opts.data["outdir_samples"] = ""
    handlers = tab.TabHandlers(api.BankService(session.backend))
    folder, role, recursive, name, message = handlers.reference_from_outputs()
    assert (folder, role, recursive, name) == (str(outputs), "reference", True, "reference-my-outputs")
    *_, (progress, report, rows, _, _) = list(handlers.build(None, folder, name, False, role, recursive,
                                                             *[""] * 5))
    count = len(write_photos(tmp_path / "count"))
    assert f"{2 * count} / {2 * count} files" in progress and [row[0] for row in rows] == ["reference-my-outputs"]
    assert session.backend.store().inspect("reference-my-outputs")["role"] == "reference"
    shared.opts.data["outdir_samples"] = str(tmp_path / "all-outputs")  # "Output directory for images" wins
    assert handlers.reference_from_outputs()[0] == str(tmp_path / "all-outputs")
