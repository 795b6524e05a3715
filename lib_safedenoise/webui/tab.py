"""The "Safe Denoiser" tab: list, inspect, build, import, export, rename and delete banks (gradio 3.41).

Every bank operation goes through ``api.BankService``; what the tab shows comes from an ``api.Backend``.
Event handlers are module-level functions or ``TabHandlers`` methods of plain values, tested without a
browser.
"""


import functools
import html
import math
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from lib_safedenoise.banks.builder import BuildReport
from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.banks.presets import card_text
from lib_safedenoise.core.latent_bank import ROLES
from lib_safedenoise.webui.accordion import ELEM_PREFIX, enforced_html
from lib_safedenoise.webui.api import CARD_FIELDS, Backend, BankService
from lib_safedenoise.webui.enforcement import EnforcementError
from lib_safedenoise.webui.prompt_bank import MAX_SAMPLES, REFERENCE_SAMPLES, PromptBankRequest, as_one_click_reference

BANK_COLUMNS = ["Name", "Title", "Images", "Latent space", "Size", "Fits the loaded model", "Enforced", "Problem"]


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def bank_rows(entries: Sequence[dict], model_loaded: bool) -> list[list]:
    rows = []
    for e in entries:
        if e.get("compatible") is None:
            compatible = "no model loaded" if not model_loaded else "?"
        else:
            compatible = "yes" if e["compatible"] else "no: " + e.get("compatibility", "")
        shape = "x".join(str(d) for d in e.get("latent_shape", []))
        rows.append([e["name"], e.get("title", ""), e.get("count", ""),
                     f"{e.get('latent_space', '?')} ({shape})" if shape else "?", human_size(e["size_bytes"]),
                     compatible, "yes" if e.get("enforced") else "", e.get("problem", "")])
    return rows


def bank_card_html(entry: dict | None) -> str:
    if not entry:
        return ""
    card = entry.get("card") or {}
    lines = [f"<b>{html.escape(card.get('title') or entry['name'])}</b>"
             f" ({entry.get('count', '?')} images, {html.escape(str(entry.get('latent_space', '?')))}, "
             f"hash {html.escape(entry.get('short_hash', '?'))})"]
    lines += [f"{name.replace('_', ' ')}: {html.escape(value)}" for name, value in card.items()
              if value and name != "title"]
    if entry.get("settings"):
        lines.append(f"recommended settings: {html.escape(str(entry['settings']))}")
    if entry.get("problem"):
        lines.append(f'<span class="safe-denoiser-error">{html.escape(entry["problem"])}</span>')
    if entry.get("enforced"):
        lines.append("<i>enforced on this server: it cannot be deleted, renamed or replaced</i>")
    return '<div class="safe-denoiser-card">' + "<br>".join(lines) + "</div>"


def message_html(text: str, *, error: bool = False) -> str:
    return f'<div class="safe-denoiser-{"error" if error else "message"}">{html.escape(text)}</div>' if text else ""


def upload_path(upload: Any) -> Path:
    """The file behind a gradio upload: a path, or (gradio 3.41 ``type="file"``) a wrapper naming it."""
    return Path(upload if isinstance(upload, (str, os.PathLike)) else upload.name)


def discard_upload(upload: Any) -> None:
    """Delete an upload's temporary files: the file itself and the empty NamedTemporaryFile gradio 3.41
    creates behind each ``type="file"`` wrapper (whose ``name`` it then points at the upload)."""
    path = upload_path(upload)
    path.unlink(missing_ok=True)
    leftover = getattr(getattr(upload, "file", None), "name", None)
    if isinstance(leftover, str) and leftover != str(path):
        upload.file.close()
        Path(leftover).unlink(missing_ok=True)


def all_empty(files: Sequence[Any] | None) -> bool:
    """Whether there are uploads and every one is an empty file. That is what gradio 3.41 hands a handler
    fired before the browser finished sending the files: their names, no content (the page holds Build
    meanwhile, see javascript/safe_denoiser.js, so this is the answer for pages without that script)."""
    paths = [upload_path(item) for item in files or []]
    return bool(paths) and all(path.is_file() and path.stat().st_size == 0 for path in paths)


def read_uploads(files: Sequence[Any] | None) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of gradio uploads, read into memory; their temporary files are deleted."""
    uploads = []
    for item in files or []:
        try:
            path = upload_path(item)
            uploads.append((path.name, path.read_bytes()))
        finally:
            discard_upload(item)
    return uploads


def progress_html(done: int, total: int, label: str, unit: str = "files") -> str:
    if total <= 0:
        return '<div class="safe-denoiser-progress">Starting…</div>'
    return (f'<div class="safe-denoiser-progress"><progress max="{total}" value="{done}"></progress> '
            f'{done} / {total} {unit} · {html.escape(os.path.basename(label))}</div>')


def report_html(report: BuildReport | None, error: str = "") -> str:
    parts = []
    if error:
        parts.append(message_html(error, error=True))
    if report is not None:
        if report.bank_count:
            counts = ", ".join(f"{n} {status}" for status, n in report.counts().items())
            parts.append(message_html(f"Bank {Path(report.path).stem} ({report.short_hash}): {report.bank_count} "
                                      f"images, in {report.seconds:.1f} s" + (f" ({counts})" if counts else "")))
        if not report.files:  # a bank from a prompt: no files to report
            return "".join(parts)
        rows = "".join(f'<tr class="safe-denoiser-file-{html.escape(f.status)}"><td>{html.escape(Path(f.source).name)}'
                       f"</td><td>{html.escape(f.status)}</td><td>{html.escape(f.detail)}</td></tr>"
                       for f in report.files)
        parts.append('<table class="safe-denoiser-report"><thead><tr><th>File</th><th>Status</th><th>Detail</th>'
                     f"</tr></thead><tbody>{rows}</tbody></table>")
    return "".join(parts)


def gate_plot(report: dict | None):
    """A matplotlib figure of the last generation's gate signal per step and image (beta where the mode
    gives one, else 1 where it fired), one panel per sampling pass; None when there is nothing to show."""
    images = (report or {}).get("images") or {}
    if not images:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    passes = [p for p in ("first", "hires") if any(s["pass"] == p for e in images.values() for s in e["steps"])]
    figure = Figure(figsize=(7, 2.6 * len(passes)), dpi=100, layout="constrained")
    axes = figure.subplots(len(passes), 1, squeeze=False)[:, 0]
    for ax, pass_name in zip(axes, passes):
        uses_beta = any(s["beta"] is not None for e in images.values() for s in e["steps"] if s["pass"] == pass_name)
        for image_id, entry in sorted(images.items(), key=lambda kv: int(kv[0])):
            steps = [s for s in entry["steps"] if s["pass"] == pass_name]
            if not steps:
                continue
            # beta is None outside the correction window: a gap in the line
            values = [(s["beta"] if s["beta"] is not None else math.nan) if uses_beta else float(s["fired"])
                      for s in steps]
            line, = ax.plot([s["step"] for s in steps], values, marker=".", label=f"image {int(image_id) + 1}")
            fired = [(s["step"], v) for s, v in zip(steps, values) if s["fired"]]
            if fired:
                ax.scatter(*zip(*fired), color=line.get_color(), s=40, zorder=3)
        ax.set_title(f"{'first pass' if pass_name == 'first' else 'hires pass'} (large dots: correction fired)",
                     fontsize=9)
        ax.set_xlabel("sampling step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        last_step = max(s["step"] for e in images.values() for s in e["steps"] if s["pass"] == pass_name)
        ax.set_xlim(0.5, last_step + 0.5)
        ax.set_ylabel("gate β" if uses_beta else "fired")
        ax.grid(alpha=0.3)
        if len(images) <= 10:
            ax.legend(fontsize=7, loc="upper right")
    return figure


def _card(values: Sequence[str]) -> dict[str, str]:
    """The card form's filled fields (``CARD_FIELDS`` order)."""
    return {key: value for key, value in zip(CARD_FIELDS, values) if value}


def prompt_request(prompt: str, negative_prompt: str, samples: float, role: str, name: str, overwrite: bool,
                   sampler_name: str, steps: float, cfg_scale: float, unguided_share: float, width: float,
                   height: float, seed: float, *card_values: str) -> PromptBankRequest:
    """The prompt form's values as a validated request (``ValueError`` says what is wrong): the share
    ``unguided_share`` of the samples at CFG 1; an empty name builds a bank named as the one-click reference;
    width and height 0 mean the model's native size, seed -1 a random one."""
    return PromptBankRequest(
        name=(name or "").strip(), prompt=prompt or "", negative_prompt=negative_prompt or "",
        samples=int(samples or 0), role=role, overwrite=bool(overwrite), sampler_name=sampler_name or "",
        steps=int(steps or 0), cfg_scale=float(cfg_scale or 0), unguided_share=float(unguided_share or 0),
        width=int(width or 0), height=int(height or 0), seed=int(seed or 0), card=_card(card_values))


def in_background(task: Callable[[Callable[[int, int, str], None]], Any], thread_name: str,
                  render: Callable[[dict], tuple]):
    """Run ``task(progress)`` (a bank build) on a worker thread, so the page's event stays responsive.

    Yields ``render(state)`` about every 0.3 s while it runs (``state``: the last ``progress(done, total,
    label)``), then returns ``(state, outcome)``: ``{"report": task's result}``, or ``{"error": message,
    "report": the error's report, if any}`` for the errors a build reports to the user."""
    state = {"done": 0, "total": 0, "label": ""}
    outcome: dict[str, Any] = {}

    def progress(done: int, total: int, label: str) -> None:
        state.update(done=done, total=total, label=label)

    def run() -> None:
        try:
            outcome["report"] = task(progress)
        except (BankError, EnforcementError, PermissionError, OSError, ValueError) as error:
            outcome["error"], outcome["report"] = str(error), getattr(error, "report", None)

    worker = threading.Thread(target=run, name=thread_name, daemon=True)
    worker.start()
    while worker.is_alive():
        yield render(state)
        worker.join(0.3)
    return state, outcome


class TabHandlers:
    """The tab's event handlers, over one ``BankService``."""

    def __init__(self, service: BankService):
        self.service = service

    def listing(self, selected: str | None = None) -> tuple[list[list], Any, list[dict]]:
        entries = self.service.list()
        names = [e["name"] for e in entries]
        rows = bank_rows(entries, self.service.backend.model_space() is not None)
        return rows, gr.update(choices=names, value=selected if selected in names else None), entries

    def refresh(self, selected: str | None):
        rows, dropdown, entries = self.listing(selected)
        entry = next((e for e in entries if e["name"] == selected), None)
        return rows, dropdown, bank_card_html(entry), enforced_html(self.service.backend.enforced())

    def select(self, name: str | None):
        """The selected bank's card; Delete and Rename are disabled for an enforced bank."""
        if not name:
            return "", gr.update(interactive=True), gr.update(interactive=True)
        try:
            entry = next((e for e in self.service.list() if e["name"] == name), None)
        except BankError as error:
            return message_html(str(error), error=True), gr.update(), gr.update()
        changeable = not (entry or {}).get("enforced", False)
        return bank_card_html(entry), gr.update(interactive=changeable), gr.update(interactive=changeable)

    def build(self, files, folder: str, name: str, overwrite: bool, role: str, recursive: bool, *card_values: str):
        """Generator of ``(progress, report, table, bank dropdown, uploads)`` updates while the bank builds.

        A request that cannot start keeps the uploads (to fix and retry); a build consumes them: they are
        read into memory, their temporary files deleted, and the upload field is cleared.
        """
        name = (name or "").strip()
        folder = (folder or "").strip()
        unchanged = (gr.update(), gr.update(), gr.update())
        problem = ("Give the bank a name." if not name else
                   "Choose uploaded images or a server folder, not both." if files and folder else
                   "Upload images or name a server folder." if not files and not folder else
                   "The uploaded files are all empty (0 bytes). If they were still uploading, wait until each "
                   "shows its size, then click Build bank again." if all_empty(files) else "")
        if problem:
            yield "", report_html(None, problem), *unchanged
            return
        card = _card(card_values)

        def task(progress):
            if folder:
                return self.service.build_from_folder(folder, name, overwrite=overwrite, role=role,
                                                      progress=progress, card=card, recursive=bool(recursive))
            return self.service.build(read_uploads(files), name, overwrite=overwrite, role=role,
                                      progress=progress, card=card)

        state, outcome = yield from in_background(task, "safe-denoiser-build", lambda state: (
            progress_html(state["done"], state["total"], state["label"]), gr.update(), *unchanged))
        rows, dropdown, _ = self.listing(name)
        yield (progress_html(state["done"], state["total"], "done" if "error" not in outcome else "stopped"),
               report_html(outcome.get("report"), outcome.get("error", "")), rows, dropdown,
               gr.update() if folder else None)

    def build_from_prompt(self, *form):
        """Generator of ``(progress, report, table, bank dropdown)`` updates while a bank of the loaded model's
        own samples of a prompt is generated (``BankService.build_from_prompt``); ``form``: the prompt form's
        values in ``prompt_request``'s order."""
        yield from self._generate(lambda: prompt_request(*form))

    def build_own_reference(self, overwrite: bool, *sampling_and_card):
        """``build_from_prompt`` for the one-click reference bank, with the form's sampling settings and card
        (``prompt_bank.as_one_click_reference``: ``REFERENCE_SAMPLES`` samples of the generic prompts, all
        guided, whatever the form's share at CFG 1)."""
        yield from self._generate(lambda: as_one_click_reference(prompt_request(
            "", "", REFERENCE_SAMPLES, "reference", "", overwrite, *sampling_and_card)))

    def _generate(self, make_request: Callable[[], PromptBankRequest]):
        try:
            request = make_request()
        except ValueError as error:
            yield "", report_html(None, str(error)), gr.update(), gr.update()
            return
        state, outcome = yield from in_background(
            lambda progress: self.service.build_from_prompt(request, progress=progress),
            "safe-denoiser-prompt-bank",
            lambda state: (progress_html(state["done"], state["total"], state["label"], "samples"), gr.update(),
                           gr.update(), gr.update()))
        built = None if "error" in outcome else Path(outcome["report"].path).stem
        rows, dropdown, _ = self.listing(built)
        yield (progress_html(state["done"], state["total"], "stopped" if "error" in outcome else "done", "samples"),
               report_html(outcome.get("report"), outcome.get("error", "")), rows, dropdown)

    def reference_from_outputs(self):
        """Point the build form at the WebUI's txt2img outputs folder, read recursively, as a reference bank."""
        folder = self.service.backend.outputs_folder()
        if not folder:
            return gr.update(), gr.update(), gr.update(), gr.update(), message_html(
                "This WebUI has no txt2img outputs folder set (Settings → Paths for saving).", error=True)
        return (folder, "reference", True, "reference-my-outputs",
                message_html(f"Ready to build a reference bank from {folder} and its sub-folders: "
                             "click Build bank."))

    def cancel(self) -> str:
        count = self.service.cancel_builds()
        return message_html("Cancelling the build…" if count else "No build is running.")

    def _after_change(self, message: str, selected: str | None, *, error: bool = False):
        rows, dropdown, entries = self.listing(selected)
        entry = next((e for e in entries if e["name"] == selected), None)
        return message_html(message, error=error), rows, dropdown, bank_card_html(entry)

    def delete(self, name: str | None, confirmed: bool):
        if not name:
            return self._after_change("Choose a bank first.", None, error=True)
        if not confirmed:
            return self._after_change(f"Kept {name}: deletion was not confirmed.", name)
        try:
            self.service.delete(name)
        except (BankError, EnforcementError, OSError) as error:
            return self._after_change(str(error), name, error=True)
        return self._after_change(f"Deleted {name}.", None)

    def rename(self, name: str | None, new_name: str):
        if not name or not (new_name or "").strip():
            return self._after_change("Choose a bank and type its new name.", name, error=True)
        try:
            renamed = self.service.rename(name, new_name.strip())
        except (BankError, EnforcementError, OSError) as error:
            return self._after_change(str(error), name, error=True)
        return self._after_change(f"Renamed {name} to {renamed}.", renamed)

    def inspect(self, name: str | None):
        if not name:
            return gr.update(value=None, visible=False), message_html("Choose a bank first.", error=True)
        try:
            return gr.update(value=self.service.inspect(name), visible=True), ""
        except (BankError, OSError) as error:
            return gr.update(value=None, visible=False), message_html(str(error), error=True)

    def export(self, name: str | None, settings_only: bool):
        """Generator of one ``(download, message)`` update. The exported file lives in a temporary folder of
        this call's own until gradio asks for the next update, which it does only after copying the file
        into its own cache (``File.postprocess``); then the folder is removed."""
        if not name:
            yield gr.update(value=None), message_html("Choose a bank first.", error=True)
            return
        try:
            with self.service.exported(name, settings_only=settings_only) as path:
                yield gr.update(value=str(path), visible=True), message_html(f"Exported {path.name}.")
        except (BankError, OSError) as error:
            yield gr.update(value=None), message_html(str(error), error=True)

    def read_preset(self, upload):
        """Show a preset's card; installing is enabled only once its card has been shown."""
        if upload is None:
            return "", gr.update(interactive=False)
        try:
            preset = self.service.read_preset(upload_path(upload))
        except (BankError, OSError, ValueError) as error:
            return message_html(str(error), error=True), gr.update(interactive=False)
        card = html.escape(card_text(preset)).replace("\n", "<br>")
        return f'<div class="safe-denoiser-card">{card}</div>', gr.update(interactive=True)

    def install_preset(self, upload, name: str, overwrite: bool, selected: str | None):
        if upload is None:
            return (*self._after_change("Choose a preset file first.", selected, error=True),
                    gr.update(interactive=False))
        path = upload_path(upload)
        try:
            installed = self.service.install_preset(path, name=(name or "").strip() or None, overwrite=overwrite)
        except (BankError, EnforcementError, OSError, ValueError) as error:
            return *self._after_change(str(error), selected, error=True), gr.update(interactive=True)
        discard_upload(upload)
        return *self._after_change(f"Installed {installed}.", installed), gr.update(interactive=False)

    def plot(self):
        report = self.service.backend.last_report()
        figure = gate_plot(report)
        note = "" if figure is not None else message_html("No generation with Safe Denoiser has finished yet.")
        return figure, note


# --------------------------------------------------------------------------- the tab: layout

def build_tab(backend: Backend | None = None) -> gr.Blocks:
    """The "Safe Denoiser" tab as a ``gr.Blocks`` for ``on_ui_tabs``."""
    service = BankService(backend or Backend.from_host())
    handlers = TabHandlers(service)
    backend = service.backend
    p = f"{ELEM_PREFIX}_tab"
    rows, _, entries = handlers.listing()
    names = [e["name"] for e in entries]
    with gr.Blocks(analytics_enabled=False) as tab:
        enforced = gr.HTML(enforced_html(backend.enforced()), elem_id=f"{p}_enforced")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, elem_id=f"{p}_build_column"):
                gr.Markdown("### Build a bank\nImages of what generations should avoid; they are encoded with "
                            "the loaded model's VAE, and only their latents are kept.")
                name = gr.Textbox(label="Bank name", elem_id=f"{p}_name", max_lines=1)
                files = gr.File(file_count="multiple", file_types=["image"], label="Images",
                                elem_id=f"{p}_files")
                folder = gr.Textbox(label="…or a folder on the server", elem_id=f"{p}_folder", max_lines=1,
                                    visible=backend.folder_inputs_allowed())
                with gr.Row(visible=backend.folder_inputs_allowed()):
                    recursive = gr.Checkbox(False, label="Include sub-folders", elem_id=f"{p}_recursive")
                    from_outputs = gr.Button("Reference from my txt2img outputs", elem_id=f"{p}_from_outputs",
                                             min_width=80)
                with gr.Accordion("Card (shown to whoever uses the bank)", open=False, elem_id=f"{p}_card_fields"):
                    card_inputs = [gr.Textbox(label=field_name.replace("_", " ").capitalize(), max_lines=1,
                                              elem_id=f"{p}_card_{field_name}") for field_name in CARD_FIELDS]
                role = gr.Radio(list(ROLES), value=ROLES[0], label="Role", elem_id=f"{p}_role")
                overwrite = gr.Checkbox(False, label="Replace a bank of the same name", elem_id=f"{p}_overwrite")
                with gr.Row():
                    build = gr.Button("Build bank", variant="primary", elem_id=f"{p}_build")
                    cancel = gr.Button("Cancel", elem_id=f"{p}_cancel")
                progress = gr.HTML("", elem_id=f"{p}_progress")
                report = gr.HTML("", elem_id=f"{p}_report")
            with gr.Column(scale=1, elem_id=f"{p}_from_prompt"):
                gr.Markdown("### From a prompt\nType what to avoid: the loaded model draws it, and only the "
                            "samples' latents are kept (no image is saved). LoRAs named in the prompt apply.")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{p}_prompt")
                negative_prompt = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{p}_negative_prompt")
                defaults = PromptBankRequest(name="")
                with gr.Row():
                    samples = gr.Number(defaults.samples, label="Samples", precision=0, minimum=1, maximum=MAX_SAMPLES,
                                        elem_id=f"{p}_samples")
                    prompt_role = gr.Radio(list(ROLES), value=ROLES[0], label="Role", elem_id=f"{p}_prompt_role")
                prompt_name = gr.Textbox(label="Bank name", elem_id=f"{p}_prompt_name", max_lines=1)
                with gr.Accordion("Sampling", open=False, elem_id=f"{p}_prompt_sampling"):
                    with gr.Row():
                        prompt_sampler = gr.Textbox(defaults.sampler_name, label="Sampler", max_lines=1,
                                                    elem_id=f"{p}_prompt_sampler")
                        prompt_steps = gr.Number(defaults.steps, label="Steps", precision=0,
                                                 elem_id=f"{p}_prompt_steps")
                        prompt_cfg = gr.Number(defaults.cfg_scale, label="CFG scale", elem_id=f"{p}_prompt_cfg")
                        prompt_unguided = gr.Slider(0.0, 1.0, value=defaults.unguided_share, step=0.05,
                                                    label="Share at CFG 1", elem_id=f"{p}_prompt_unguided")
                    with gr.Row():
                        prompt_width = gr.Number(defaults.width, label="Width (0: the model's own)", precision=0,
                                                 elem_id=f"{p}_prompt_width")
                        prompt_height = gr.Number(defaults.height, label="Height (0: the model's own)", precision=0,
                                                  elem_id=f"{p}_prompt_height")
                        prompt_seed = gr.Number(defaults.seed, label="Seed (-1: random)", precision=0,
                                                elem_id=f"{p}_prompt_seed")
                with gr.Row():
                    prompt_overwrite = gr.Checkbox(False, label="Replace a bank of the same name",
                                                   elem_id=f"{p}_prompt_overwrite")
                    prompt_build = gr.Button("Build from prompt", variant="primary", elem_id=f"{p}_prompt_build")
                    own_reference = gr.Button(f"Reference from the model's own samples ({REFERENCE_SAMPLES})",
                                              elem_id=f"{p}_own_reference")
                    prompt_cancel = gr.Button("Cancel", elem_id=f"{p}_prompt_cancel")
                prompt_progress = gr.HTML("", elem_id=f"{p}_prompt_progress")
                prompt_report = gr.HTML("", elem_id=f"{p}_prompt_report")
            with gr.Column(scale=1, elem_id=f"{p}_banks_column"):
                gr.Markdown("### Banks")
                table = gr.Dataframe(rows, headers=BANK_COLUMNS, interactive=False, wrap=True,
                                     elem_id=f"{p}_table")
                with gr.Row():
                    selected = gr.Dropdown(names, value=None, label="Bank", elem_id=f"{p}_selected", scale=8)
                    refresh = gr.Button("\U0001f504", elem_id=f"{p}_refresh", elem_classes=["tool"], scale=0,
                                        min_width=40)
                card = gr.HTML("", elem_id=f"{p}_card")
                with gr.Row():
                    inspect = gr.Button("Inspect", elem_id=f"{p}_inspect", min_width=80)
                    export = gr.Button("Export bank", elem_id=f"{p}_export", min_width=80)
                    export_settings = gr.Button("Export settings", elem_id=f"{p}_export_settings", min_width=80)
                    delete = gr.Button("Delete", variant="stop", elem_id=f"{p}_delete", min_width=80)
                with gr.Row():
                    new_name = gr.Textbox(label="New name", elem_id=f"{p}_new_name", max_lines=1, scale=3)
                    rename = gr.Button("Rename", elem_id=f"{p}_rename", scale=1)
                message = gr.HTML("", elem_id=f"{p}_message")
                details = gr.JSON(visible=False, elem_id=f"{p}_details")
                download = gr.File(label="Exported file", interactive=False, visible=False, elem_id=f"{p}_download")
                with gr.Accordion("Import a preset", open=False, elem_id=f"{p}_import"):
                    preset_file = gr.File(file_count="single", file_types=[".safetensors", ".json"],
                                          label="Bank (.safetensors) or settings preset (.preset.json)",
                                          elem_id=f"{p}_preset_file")
                    preset_card = gr.HTML("", elem_id=f"{p}_preset_card")
                    with gr.Row():
                        preset_name = gr.Textbox(label="Install as (optional)", max_lines=1,
                                                 elem_id=f"{p}_preset_name")
                        preset_overwrite = gr.Checkbox(False, label="Replace", elem_id=f"{p}_preset_overwrite")
                    install = gr.Button("Install", interactive=False, elem_id=f"{p}_install")
        with gr.Accordion("Last generation: gate signal per step", open=False, elem_id=f"{p}_plot_section"):
            plot = gr.Plot(elem_id=f"{p}_plot")
            plot_note = gr.HTML("", elem_id=f"{p}_plot_note")
            plot_refresh = gr.Button("Show the last generation", elem_id=f"{p}_plot_refresh")
        confirmed = gr.Checkbox(False, visible=False, elem_id=f"{p}_delete_confirmed")

        changed = [message, table, selected, card]
        build.click(handlers.build, inputs=[files, folder, name, overwrite, role, recursive, *card_inputs],
                    outputs=[progress, report, table, selected, files])
        sampling = [prompt_sampler, prompt_steps, prompt_cfg, prompt_unguided, prompt_width, prompt_height,
                    prompt_seed]
        from_outputs.click(handlers.reference_from_outputs, outputs=[folder, role, recursive, name, report])
        prompt_build.click(handlers.build_from_prompt,
                           inputs=[prompt, negative_prompt, samples, prompt_role, prompt_name, prompt_overwrite,
                                   *sampling, *card_inputs],
                           outputs=[prompt_progress, prompt_report, table, selected])
        own_reference.click(handlers.build_own_reference, inputs=[prompt_overwrite, *sampling, *card_inputs],
                            outputs=[prompt_progress, prompt_report, table, selected])
        cancel.click(handlers.cancel, outputs=[message], queue=False)
        prompt_cancel.click(handlers.cancel, outputs=[message], queue=False)
        refresh.click(handlers.refresh, inputs=[selected], outputs=[table, selected, card, enforced])
        selected.change(handlers.select, inputs=[selected], outputs=[card, delete, rename])
        delete.click(handlers.delete, _js="safeDenoiserConfirmDelete", inputs=[selected, confirmed], outputs=changed)
        rename.click(handlers.rename, inputs=[selected, new_name], outputs=changed)
        inspect.click(handlers.inspect, inputs=[selected], outputs=[details, message])
        # partial, not lambda: gradio runs a handler as a generator only if it is a generator function
        export.click(functools.partial(handlers.export, settings_only=False), inputs=[selected],
                     outputs=[download, message])
        export_settings.click(functools.partial(handlers.export, settings_only=True), inputs=[selected],
                              outputs=[download, message])
        preset_file.change(handlers.read_preset, inputs=[preset_file], outputs=[preset_card, install])
        install.click(handlers.install_preset, inputs=[preset_file, preset_name, preset_overwrite, selected],
                      outputs=[*changed, install])
        plot_refresh.click(handlers.plot, outputs=[plot, plot_note])
    return tab
