"""A small real-gradio page standing in for the WebUI: a txt2img column with our accordion and a "Generate"
button, and the "Safe Denoiser" tab, with the page scripts injected the way modules/ui_gradio_extensions.py
does (the WebUI patches ``gradio.routes.templates.TemplateResponse`` to add every extension's
``javascript/*.js`` before ``</head>`` and its ``style.css`` before ``</body>``).

"Generate" stands in for a txt2img run: it parses the script arguments the accordion hands over, records a
report as ``hooks.end_generation`` does, shows an image in the output gallery and rewrites
``#html_info_txt2img`` as the WebUI does at the end of a run.

The output panel is built as modules/ui_common.py ``create_output_panel`` builds it (gallery ``txt2img_gallery``
with preview, the row ``image_buttons_txt2img`` of Send-to tool buttons, ``html_info_txt2img``,
``html_log_txt2img``), and each of those components is handed to our after-component callback as the WebUI's
patched gradio does (modules/gradio_extensons.py ``IOComponent_init``); the WebUI also gives every component the
class ``gradio-<block name>``, which its ``selected_gallery_index()`` looks for. The gallery shows a PIL image,
which gradio 3.41 saves into its temporary folder: what the WebUI serves when "Save images" is off.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import gradio as gr
from PIL import Image

from lib_safedenoise.webui import accordion, keys, negate_image, session, tab
from lib_safedenoise.webui.api import BankService
from lib_safedenoise.webui.args import GenerationArgs

REPO = Path(__file__).resolve().parents[2]
PAGE_SCRIPTS = [Path(__file__).with_name("webui_page.js"), *sorted((REPO / "javascript").glob("*.js"))]
STYLESHEET = REPO / "style.css"


def inject_page_scripts() -> None:
    scripts = "".join(f"<script type=\"text/javascript\">{path.read_text()}</script>\n" for path in PAGE_SCRIPTS)
    css = f"<style>{STYLESHEET.read_text()}</style>"
    original = getattr(gr.routes.templates, "safe_denoiser_original_response", gr.routes.templates.TemplateResponse)
    gr.routes.templates.safe_denoiser_original_response = original

    def template_response(*args, **kwargs):
        response = original(*args, **kwargs)
        response.body = response.body.replace(b"</head>", scripts.encode() + b"</head>")
        response.body = response.body.replace(b"</body>", css.encode() + b"</body>")
        response.init_headers()
        return response

    gr.routes.templates.TemplateResponse = template_response


def fake_generation(report: dict):
    runs = []

    def generate(prompt: str, *script_args):
        args = GenerationArgs.from_script_args(script_args)
        runs.append(args)
        if args.enabled:
            session.remember_report(report)
        info = f"<p>run {len(runs)}: {prompt}</p><p>Safe Denoiser: {'on' if args.enabled else 'off'}</p>"
        image = Image.new("RGB", (64, 64), ((40 * len(runs)) % 256, 120, 200))
        return json.dumps({"run": len(runs), "args": args.to_script_args()}), [image], info
    return generate


def build_page(backend, report: dict) -> gr.Blocks:
    from modules.ui_components import ToolButton

    tab_blocks = tab.build_tab(backend)
    after_component = negate_image.GalleryButtons(
        lambda: negate_image.ImageNegator.from_host(BankService(backend)), ToolButton)

    def created(component):
        after_component(component, elem_id=component.elem_id)
        return component

    with gr.Blocks(title="Safe Denoiser test page", analytics_enabled=False) as page:
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", elem_id="tab_txt2img"):
                prompt = gr.Textbox("a photo of a cat", label="Prompt", elem_id="txt2img_prompt")
                controls = accordion.build_accordion(False, backend)
                generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                received = gr.Textbox(label="Script arguments received", elem_id="txt2img_script_args")
                gallery = created(gr.Gallery(label="Output", show_label=False, elem_id="txt2img_gallery", columns=4,
                                             preview=True, elem_classes=["gradio-gallery"]))
                with gr.Row(elem_id="image_buttons_txt2img", elem_classes="image-buttons"):
                    for target, symbol in (("img2img", "🖼️"), ("inpaint", "🎨️"), ("extras", "📐")):
                        created(ToolButton(symbol, elem_id=f"txt2img_send_to_{target}"))
                html_info = gr.HTML(elem_id="html_info_txt2img")
                created(gr.HTML(elem_id="html_log_txt2img"))
            with gr.Tab(keys.TAB_TITLE, elem_id="tab_safe_denoiser_tab"):
                tab_blocks.render()
        generate.click(fake_generation(report), inputs=[prompt, *controls.components],
                       outputs=[received, gallery, html_info])
    return page


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(backend, report: dict) -> tuple[gr.Blocks, str]:
    inject_page_scripts()
    page = build_page(backend, report)
    page.queue()
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                show_error=True)
    return page, f"http://127.0.0.1:{port}/"
