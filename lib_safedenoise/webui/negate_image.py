""""Negate this image": add one image the WebUI made to a negation bank, from the gallery's button or the API.

A user who sees an output they never want again adds it to a negation bank (an existing one, or a new one of
that name); generations with that bank are then steered away from it. ``ImageNegator`` does it with
``api.BankService.build(append=True)``, so the rules of every bank write hold: the loaded model's VAE encodes the
image under the WebUI's queue lock, enforced banks are refused before anything is read, and the write is atomic
(a failure leaves the bank as it was). A bank of role ``reference`` (ordinary images) is refused: adding the
image there would pull generations towards it.

Which images: the gallery's selected image, or over the API a path or base64 bytes. A path is read only when,
links resolved, it lies inside one of the folders the WebUI writes its images to and serves them from
(``host.output_folders``: the ``outdir_*`` settings and the temporary image folders): the route never reads an
arbitrary server file. The gallery hands its images over differently per host: gradio 3.41 (AUTOMATIC1111)
passes each as ``{"name": <server path>[?<mtime>], ...}``, a client-supplied path that is checked like the
API's; gradio 4 (Forge, ``gr.Gallery(type="pil")``) passes ``(PIL image, caption)`` pairs it loaded itself from
files in its own upload cache (it refuses other paths).

The button is added beside the gallery's Send-to buttons by ``GalleryButtons`` (an ``on_after_component``
callback): a click first asks the server for the negation banks (to a hidden textbox), then the page script
``safeDenoiserNegateImage`` finds the selected image (the WebUI's own ``selected_gallery_index()``) and asks
once, naming the bank, before the image is sent; the answer goes to the WebUI's ``html_log_<tab>`` line.
It is a gradio event, not a call of the HTTP route, so it works without ``--api`` and behind ``--gradio-auth``.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import unquote

from pydantic import BaseModel, Field

from lib_safedenoise.banks.builder import EmptyBuildError, sanitize_name
from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.webui import enforcement
from lib_safedenoise.webui.api import BankService, decode_base64

DEFAULT_BANK = "negated images"
ROUTE = "/negate-image"
TABS = ("txt2img", "img2img")
BUTTON_LABEL = "⛔"


class ImageRefused(BankError):
    """The image cannot be taken: a path outside the WebUI's image folders, no image, no selection."""


class ImageNotAdded(BankError):
    """The image was read but not added (unusable, or already in the bank); ``report`` says why per file."""

    def __init__(self, message: str, report):
        super().__init__(message)
        self.report = report


@dataclass
class Added:
    bank: str
    created: bool
    count: int
    image: str
    report: dict

    def as_dict(self) -> dict[str, Any]:
        return {"bank": self.bank, "created": self.created, "count": self.count, "image": self.image,
                "report": self.report}

    def message(self) -> str:
        kind = "a new negation bank" if self.created else "the negation bank"
        plural = "" if self.count == 1 else "s"
        return (f"Added {self.image} to {kind} \"{self.bank}\": it now holds {self.count} image{plural}. "
                f"Select it under Safe Denoiser to avoid such images.")


class ImageNegator:
    def __init__(self, service: BankService, output_folders: Callable[[], list[str]]):
        self.service = service
        self.output_folders = output_folders
        self.last_bank: str | None = None

    @classmethod
    def from_host(cls, service: BankService) -> "ImageNegator":
        from lib_safedenoise.webui import host

        return cls(service, host.output_folders)

    # ------------------------------------------------------------------ which image

    def served_file(self, path_or_url: str) -> Path:
        """The file that ``path_or_url`` names, links resolved, if it lies inside one of the WebUI's image
        folders; else ``ImageRefused``. Accepts a server path or the URL the page shows it under: gradio serves
        files as ``<root>/file=<path>`` and AUTOMATIC1111 appends ``?<mtime>`` to saved outputs
        (``modules/ui_tempdir.save_pil_to_file``)."""
        text = str(path_or_url or "").strip()
        if "file=" in text and not Path(text).exists():
            text = unquote(text.split("file=", 1)[1])
        if "?" in text and not Path(text).exists():
            text = text.rsplit("?", 1)[0]
        if not text:
            raise ImageRefused("no image path given")
        path = Path(os.path.realpath(text))
        folders = [Path(os.path.realpath(folder)) for folder in self.output_folders()]
        if not any(path.is_relative_to(folder) for folder in folders):
            raise ImageRefused(f"{Path(text).name!r} is not an image this WebUI wrote: only files inside its "
                               "output and temporary image folders can be added (send other images as base64)")
        if not path.is_file():
            raise ImageRefused(f"{path.name!r} is not a file (was it deleted or moved?)")
        return path

    def served_source(self, path_or_url: str) -> tuple[tuple[str, bytes], str]:
        """``(builder source, display name)`` of the file ``served_file`` allows."""
        path = self.served_file(path_or_url)
        return (path.name, path.read_bytes()), path.name

    def gallery_source(self, gallery: Any, index: int) -> tuple[Any, str]:
        """The ``(builder source, display name)`` of gallery item ``index`` (the only one if none is selected).

        ``gallery`` is the gallery's value as the host's gradio hands it to an event (see the module's
        docstring): dicts with a ``name`` path (gradio 3.41) or ``(image, caption)`` pairs (gradio 4)."""
        items = list(gallery or [])
        if not items:
            raise ImageRefused("the gallery is empty: generate an image first")
        if index is None or index < 0:
            if len(items) > 1:
                raise ImageRefused("select an image in the gallery first (click it)")
            index = 0
        if index >= len(items):
            raise ImageRefused(f"no image {index} in the gallery (it holds {len(items)})")
        item = items[index]
        if isinstance(item, dict):
            item = item.get("name")
        elif isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, (str, os.PathLike)):
            return self.served_source(str(item))
        if hasattr(item, "save") and hasattr(item, "size"):  # a PIL image gradio loaded from its own cache
            return item, f"image {index + 1} of the gallery"
        raise ImageRefused(f"the gallery's image {index} came as {type(item).__name__}, which is not an image")

    # ------------------------------------------------------------------ banks

    def choices(self) -> dict[str, Any]:
        """The banks the image may go to (negation banks that fit the loaded model and are not enforced) and
        the one proposed: the bank last added to, else the first negation bank among the default banks,
        else ``DEFAULT_BANK``."""
        banks = [{"name": bank["name"], "count": bank.get("count", 0)} for bank in self.service.list()
                 if bank.get("role") == "negation" and bank.get("compatible") is not False and not bank["enforced"]]
        names = [bank["name"] for bank in banks]
        defaults = [self.last_bank] + list(self.service.backend.default_banks())
        default = next((name for name in defaults if name in names), DEFAULT_BANK)
        return {"banks": banks, "default": default}

    def add(self, source: Any, image_name: str, bank: str) -> Added:
        """Encode ``source`` into negation bank ``bank``: appended when it exists, created otherwise."""
        clean = sanitize_name(bank)
        self.service.backend.guard_change(clean)  # before the bank is read: an enforced name says so
        store = self.service.backend.store()
        exists = store.path_of(clean).is_file()
        if exists:
            meta = store.entry(clean).meta
            if meta is None:
                raise BankError(f"bank {clean!r} cannot be read: {store.entry(clean).problem}")
            if meta.role != "negation":
                raise BankError(f"bank {clean!r} is a {meta.role} bank (ordinary images that generations are "
                                "pulled towards); choose a negation bank or a new name")
        try:
            report = self.service.build([source], clean, append=exists)
        except EmptyBuildError as error:
            problem = error.report.files[0] if error.report.files else None
            if problem is not None and problem.status == "duplicate":
                raise ImageNotAdded(f"{image_name} is already in bank {clean!r}; nothing was changed",
                                    error.report) from None
            why = f"{problem.status}: {problem.detail}" if problem is not None else "no image"
            raise ImageNotAdded(f"{image_name} cannot be used ({why}); nothing was written", error.report) from None
        self.last_bank = clean
        return Added(clean, not exists, report.bank_count, image_name, report.as_dict())

    # ------------------------------------------------------------------ the gallery button's event

    def from_gallery(self, request: str, gallery: Any) -> str:
        """The button's event: ``request`` is what ``safeDenoiserNegateImage`` answered (JSON ``{"index",
        "bank"}``, or ``{"cancelled": true}``); returns the HTML line for ``html_log_<tab>``. Without an image
        to ask about, the page sends no bank and the answer says what is missing."""
        try:
            asked = json.loads(request or "{}")
        except ValueError:
            asked = {}
        if not isinstance(asked, dict) or asked.get("cancelled"):
            return ""
        try:
            source, name = self.gallery_source(gallery, int(asked.get("index", -1)))
            return _note(self.add(source, name, str(asked["bank"])).message(), "safe-denoiser-message")
        except (BankError, enforcement.EnforcementError, ValueError) as error:
            return _note(f"Not added: {error}", "safe-denoiser-error")


def _note(text: str, css_class: str) -> str:
    return f'<div class="{css_class}">{html.escape(text, quote=False)}</div>'


# --------------------------------------------------------------------------- the gallery button

class GalleryButtons:
    """``on_after_component`` callback adding the button to the txt2img and img2img output panels.

    The WebUI builds each panel as (modules/ui_common.py ``create_output_panel``): the gallery
    ``<tab>_gallery``, then the row ``image_buttons_<tab>`` ending with ``<tab>_send_to_extras``, then the
    info line ``html_log_<tab>``. The button (and a hidden textbox carrying the bank choices to the page
    script) is created right after ``<tab>_send_to_extras``, inside that row; its events are wired once
    ``html_log_<tab>`` exists. A UI reload builds the panels again and they are found again.
    """

    def __init__(self, negator: Callable[[], ImageNegator], button_class: Callable[..., Any]):
        self.negator = negator
        self.button_class = button_class
        self.parts: dict[str, dict[str, Any]] = {}

    def __call__(self, component, **kwargs) -> None:
        elem_id = kwargs.get("elem_id") or getattr(component, "elem_id", None)
        for tab in TABS:
            if elem_id == f"{tab}_gallery":
                self.parts[tab] = {"gallery": component}
            elif elem_id == f"{tab}_send_to_extras" and tab in self.parts:
                self.add_button(tab)
            elif elem_id == f"html_log_{tab}" and "button" in self.parts.get(tab, {}):
                self.wire(tab, component)

    def add_button(self, tab: str) -> None:
        import gradio as gr

        parts = self.parts[tab]
        parts["button"] = self.button_class(BUTTON_LABEL, elem_id=f"safe_denoiser_{tab}_negate_image")
        parts["exchange"] = gr.Textbox(visible=False, elem_id=f"safe_denoiser_{tab}_negate_image_exchange")

    def wire(self, tab: str, html_log) -> None:
        parts = self.parts.pop(tab)
        negator = self.negator()
        parts["button"].click(fn=lambda: json.dumps(negator.choices()), inputs=[], outputs=[parts["exchange"]],
                              show_progress=False).then(
            fn=negator.from_gallery, _js="safeDenoiserNegateImage", inputs=[parts["exchange"], parts["gallery"]],
            outputs=[html_log], show_progress=False)


# --------------------------------------------------------------------------- HTTP route

class NegateImageRequest(BaseModel):
    bank: str = Field(..., description="negation bank to add to; created when there is none of this name")
    path: Optional[str] = Field(None, description="an image this WebUI wrote: a server path, or the URL the "
                                                  "page serves it under (…/file=<path>)")
    image: Optional[str] = Field(None, description="base64 image bytes (a data: URL prefix is accepted), "
                                                   "instead of path")
    name: str = Field("", description="the image's name for the report, with image")


def add_route(negator: ImageNegator) -> Callable[[Any, Callable[..., Any]], None]:
    """For ``api.register_routes(extra_routes=...)``: adds ``POST <prefix>/negate-image`` through the bank
    routes' ``call`` (their error rules, and refused as a write on a server reachable from other machines
    without ``--api-auth``)."""

    def negate(request: NegateImageRequest) -> dict:
        if (request.path is None) == (request.image is None):
            raise ImageRefused("give exactly one of path and image")
        if request.path is not None:
            source, name = negator.served_source(request.path)
        else:
            name = request.name or "the image"
            source = (name, decode_base64(request.image, "image"))
        return negator.add(source, name, request.bank).as_dict()

    def add(router, call: Callable[..., Any]) -> None:
        def negate_image(request: NegateImageRequest) -> dict:
            return call(lambda: negate(request), writes=True)

        router.add_api_route(ROUTE, negate_image, methods=["POST"])

    return add


@lru_cache(maxsize=1)
def host_negator() -> ImageNegator:
    """The server's one negator (the gallery buttons and the route share the bank last added to)."""
    from lib_safedenoise.webui.api import Backend

    return ImageNegator.from_host(BankService(Backend.from_host()))
