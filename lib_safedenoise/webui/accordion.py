"""The per-generation accordion under the prompt (gradio 3.41, the WebUI's version).

It only creates components and wires events: what it shows comes from an ``api.Backend`` (the WebUI's
through ``Backend.from_host``), and building it changes nothing (the WebUI's API builds it again to learn
the default arguments). Event handlers are module-level functions of plain values, tested without a browser.
"""


import html
from dataclasses import dataclass, field
from typing import Any, Sequence

import gradio as gr

from lib_safedenoise.core import modes
from lib_safedenoise.webui.api import Backend
from lib_safedenoise.webui.args import (
    ARG_NAMES,
    GenerationArgs,
    control_range,
    format_strengths,
)
from lib_safedenoise.webui.keys import TAB_TITLE
from lib_safedenoise.webui.session import format_steps

ELEM_PREFIX = "safe_denoiser"
MAX_STRENGTH_SLIDERS = 6


@dataclass
class AccordionControls:
    """``components`` are the script's arguments, in ``generation_args.ARG_NAMES`` order."""

    components: list
    status: Any
    status_refresh: Any
    bank_refresh: Any
    strength_sliders: list = field(default_factory=list)


def strength_values(banks: Sequence[str], text: str) -> list[float]:
    """One strength per bank from the ``strengths`` argument (a single number applies to every bank)."""
    args = GenerationArgs(enabled=True, banks=tuple(banks), strengths=text)
    return [args.strength_of(i) for i in range(len(banks))]


def sync_strength_sliders(banks: Sequence[str] | None, text: str) -> list:
    """Updates for ``[strengths, *sliders]``: one visible slider per selected bank, labelled with it."""
    banks = list(banks or [])
    try:
        values = strength_values(banks, text)
    except ValueError:
        values = [1.0] * len(banks)
    sliders = [gr.update(visible=True, label=f"Strength: {banks[i]}", value=values[i]) if i < len(banks)
               else gr.update(visible=False) for i in range(MAX_STRENGTH_SLIDERS)]
    return [format_strengths(values), *sliders]


def set_strength(index: int, banks: Sequence[str] | None, text: str, value: float) -> str:
    """The ``strengths`` argument after slider ``index`` moved (banks beyond the sliders keep theirs)."""
    banks = list(banks or [])
    try:
        values = strength_values(banks, text)
    except ValueError:
        values = [1.0] * len(banks)
    if index < len(values):
        values[index] = float(value)
    return format_strengths(values)


def refresh_bank_choices(names: Sequence[str], selected: Sequence[str] | None):
    return gr.update(choices=list(names), value=[n for n in (selected or []) if n in names])


def mode_description(mode: str) -> str:
    try:
        mode = modes.resolve_mode(mode)
    except ValueError as error:
        return str(error)
    return f"*{mode}*: {modes.MODES[mode].summary}"


def status_html(report: dict | None) -> str:
    """The accordion's status line after a run: on which images the correction fired, at which steps."""
    if not report or not report.get("images") and not report.get("problems"):
        return ""
    images = report.get("images", {})
    fired = {int(i) + 1: entry.get("fired") or "" for i, entry in images.items()
             if any(step.get("fired") for step in entry.get("steps", []))}
    if not images:
        text = "did not run"
    elif not fired:
        text = f"did not fire on any of {len(images)} image{'s' * (len(images) > 1)}"
    elif len(images) <= 4:
        text = "; ".join(f"image {i}: steps {fired[i]}" if i in fired else f"image {i}: not fired"
                         for i in sorted(int(k) + 1 for k in images))
    else:
        all_steps = sorted({step["step"] for entry in images.values() for step in entry.get("steps", [])
                            if step.get("fired") and step.get("pass") == "first"})
        text = f"fired on {len(fired)} of {len(images)} images (steps {format_steps(all_steps)})"
    problems = report.get("problems", [])
    warning = (f' <span class="safe-denoiser-warning" title="{html.escape(" / ".join(problems))}">'
               f'⚠ {len(problems)} problem{"s" * (len(problems) > 1)}</span>') if problems else ""
    return f'<span class="safe-denoiser-status">Last run: {html.escape(text)}</span>{warning}'


def enforced_html(names: Sequence[str]) -> str:
    if not names:
        return ""
    listed = ", ".join(f"<b>{html.escape(n)}</b>" for n in names)
    return (f'<div class="safe-denoiser-enforced">Enforced on this server: {listed}. These banks apply to '
            f"every generation (UI and API) whatever is chosen here, and cannot be deleted, renamed or "
            f"replaced.</div>")


def build_accordion(is_img2img: bool, backend: Backend | None = None,
                    accordion_class: type | None = None) -> AccordionControls:
    """The per-generation controls; returns them in ``ARG_NAMES`` order (the script's arguments)."""
    if backend is None:
        backend = Backend.from_host()
    if accordion_class is None:
        from lib_safedenoise.webui import host

        accordion_class = host.input_accordion_class()
    prefix = f"{ELEM_PREFIX}_{'img2img' if is_img2img else 'txt2img'}"
    names = backend.store().names()
    defaults = GenerationArgs(enabled=backend.default_enabled(),
                              banks=tuple(n for n in backend.default_banks() if n in names))
    with accordion_class(defaults.enabled, label=TAB_TITLE, elem_id=prefix) as enabled:
        with enabled.extra():
            status = gr.HTML("", elem_id=f"{prefix}_status")
        gr.HTML(enforced_html(backend.enforced()), elem_id=f"{prefix}_enforced")
        with gr.Row():
            banks = gr.Dropdown(names, value=list(defaults.banks), multiselect=True, label="Negation banks",
                                elem_id=f"{prefix}_banks", scale=8)
            bank_refresh = gr.Button("\U0001f504", elem_id=f"{prefix}_banks_refresh", elem_classes=["tool"],
                                     scale=0, min_width=40)
        strengths = gr.Textbox(format_strengths([1.0] * len(defaults.banks)), visible=False,
                               elem_id=f"{prefix}_strengths", label="Strengths")
        with gr.Row():
            sliders = [gr.Slider(**control_range("strengths"), value=1.0, visible=i < len(defaults.banks),
                                 label=f"Strength: {defaults.banks[i]}" if i < len(defaults.banks) else "Strength",
                                 elem_id=f"{prefix}_strength_{i}", min_width=120)
                       for i in range(MAX_STRENGTH_SLIDERS)]
        with gr.Row():
            mode = gr.Dropdown(["default", *backend.mode_names()], value=defaults.mode, label="Mode",
                               elem_id=f"{prefix}_mode", scale=1)
            mode_info = gr.Markdown(mode_description(defaults.mode), elem_id=f"{prefix}_mode_info")
        with gr.Accordion("Advanced", open=False, elem_id=f"{prefix}_advanced"):
            with gr.Row():
                bandwidth = gr.Number(defaults.bandwidth, label="Bandwidth (0 = the mode's own)",
                                      **control_range("bandwidth"), elem_id=f"{prefix}_bandwidth")
                threshold = gr.Number(defaults.threshold, label="Threshold (negative = the mode's own)",
                                      elem_id=f"{prefix}_threshold")
            with gr.Row():
                window_start = gr.Slider(**control_range("window_start"), value=defaults.window_start,
                                         label="Window start", elem_id=f"{prefix}_window_start")
                window_end = gr.Slider(**control_range("window_end"), value=defaults.window_end, label="Window end",
                                       elem_id=f"{prefix}_window_end")
        status_refresh = gr.Button("Refresh status", visible=False, elem_id=f"{prefix}_status_refresh")

    bank_refresh.click(lambda selected: refresh_bank_choices(backend.store().names(), selected),
                       inputs=[banks], outputs=[banks], queue=False)
    for source in (banks, strengths):
        source.change(sync_strength_sliders, inputs=[banks, strengths], outputs=[strengths, *sliders], queue=False)
    for index, slider in enumerate(sliders):
        slider.input(lambda b, t, v, index=index: set_strength(index, b, t, v), inputs=[banks, strengths, slider],
                     outputs=[strengths], queue=False)
    mode.change(mode_description, inputs=[mode], outputs=[mode_info], queue=False)
    status_refresh.click(lambda: status_html(backend.last_report()), outputs=[status], queue=False)

    components = [enabled, banks, strengths, mode, bandwidth, window_start, window_end, threshold]
    assert len(components) == len(ARG_NAMES)
    return AccordionControls(components, status, status_refresh, bank_refresh, sliders)
