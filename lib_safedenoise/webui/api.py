"""Bank operations, as the "Safe Denoiser" tab and the HTTP API perform them.

``BankService`` is the one implementation of listing, inspecting, building, importing, exporting, renaming
and deleting banks, with the rules both front ends obey: enforced banks are never deleted, renamed or
replaced (checked before the bank is looked up); encoding takes the WebUI's queue lock (no generation or
model swap runs meanwhile); uploads are decoded from memory; each export is written to its own temporary
folder, removed when the caller is done with it. ``Backend`` is what the service needs from the WebUI, as
plain callables (``Backend.from_host`` wires them to ``lib_safedenoise.webui.host``), so it runs the same
outside the WebUI.

``register_routes`` adds the HTTP routes under ``ROUTE_PREFIX`` to the WebUI's FastAPI app, with the same
dependencies (``--api-auth``) as the WebUI's own API routes. On a server reachable from other machines they
refuse writes (``host.api_writes_allowed``) and downloads of bank contents (``host.api_downloads_allowed``: a
bank's latents decode back into recognisable images) with a 403 that says how to allow them.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, List, Optional

from pydantic import BaseModel, Field

from lib_safedenoise.webui import args, enforcement, keys, prompt_bank, server, session
from lib_safedenoise.banks.store import BankStore, upload_file_name
from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.banks.fileformat import BANK_SUFFIX
from lib_safedenoise.banks.builder import BuildReport, Progress, sanitize_name
from lib_safedenoise.banks.encoders import Encoder
from lib_safedenoise.banks.presets import PRESET_SUFFIX, Preset

ROUTE_PREFIX = "/safe-denoiser/v1"
CARD_FIELDS = ("title", "description", "author", "license", "usage_hint")


@dataclass(frozen=True)
class Backend:
    store: Callable[[], BankStore]
    encoder: Callable[[], Encoder]  # the loaded model's VAE; raises BankError when there is none
    model_space: Callable[[], str | None]  # latent space of the loaded model, None when none is loaded
    enforced: Callable[[], tuple[str, ...]]
    guard_change: Callable[[str], None]  # raises enforcement.EnforcementError for an enforced bank
    gpu_lock: Callable[[], ContextManager]
    folder_inputs_allowed: Callable[[], bool]
    api_writes_allowed: Callable[[], bool]
    api_downloads_allowed: Callable[[], bool]
    last_report: Callable[[], dict]
    mode_names: Callable[[], list[str]]
    default_enabled: Callable[[], bool]
    default_banks: Callable[[], list[str]]
    # the WebUI's txt2img processing (``host.txt2img_latents``); None where there is none (prompt banks refused)
    generate: Optional[Callable[..., dict]] = None
    interrupt: Callable[[], None] = lambda: None  # stop the running generation (the Interrupt button)
    outputs_folder: Callable[[], str] = lambda: ""  # where txt2img saves its images ("" when unknown)
    host_name: Callable[[], str] = lambda: ""

    @classmethod
    def from_host(cls) -> "Backend":
        from lib_safedenoise.webui import host

        return cls(store=server.bank_store, encoder=server.webui_vae_encoder, model_space=host.loaded_latent_space,
                   enforced=server.enforced_bank_names, guard_change=server.guard_bank_change,
                   gpu_lock=host.queue_lock, folder_inputs_allowed=host.folder_inputs_allowed,
                   api_writes_allowed=host.api_writes_allowed,
                   api_downloads_allowed=host.api_downloads_allowed, last_report=session.last_report,
                   mode_names=server.mode_names,
                   default_enabled=lambda: bool(host.opts_value(keys.SETTING_DEFAULT_ENABLED, False)),
                   default_banks=lambda: list(args.parse_bank_list(
                       host.opts_value(keys.SETTING_DEFAULT_BANKS, []))),
                   generate=host.txt2img_latents, interrupt=host.interrupt_generation,
                   outputs_folder=host.txt2img_outputs_folder, host_name=host.host_kind)


class BankNotFound(BankError):
    pass


class BankService:
    def __init__(self, backend: Backend):
        self.backend = backend
        self._cancels: set[threading.Event] = set()

    # ------------------------------------------------------------------ reading

    def is_enforced(self, name: str) -> bool:
        try:
            self.backend.guard_change(name)
        except enforcement.EnforcementError:
            return True
        return False

    def list(self) -> list[dict[str, Any]]:
        """Every bank with its card, size, latent space, compatibility with the loaded model, enforcement."""
        space = self.backend.model_space()
        return [entry.as_dict() | {"enforced": self.is_enforced(entry.name)}
                for entry in self.backend.store().list(space_id=space)]

    def inspect(self, name: str) -> dict[str, Any]:
        store = self._store_with(name)
        data = store.inspect(name)
        space = self.backend.model_space()
        if space is not None:
            entry = store.entry(name, space_id=space)
            data.update(compatible=entry.compatible, compatibility=entry.compatibility)
        return data | {"enforced": self.is_enforced(name)}

    def _store_with(self, name: str) -> BankStore:
        store = self.backend.store()
        if not store.path_of(name).is_file():
            raise BankNotFound(f"no bank named {name!r} (banks: {', '.join(store.names()) or 'none'})")
        return store

    # ------------------------------------------------------------------ writing

    def _guard_target(self, name: str) -> str:
        """The sanitised name a write will produce, after refusing enforced names."""
        clean = sanitize_name(name)
        self.backend.guard_change(clean)
        return clean

    def build(self, sources: Iterable[Any], name: str, *, overwrite: bool = False, role: str = "negation",
              progress: Progress | None = None, card: dict[str, str] | None = None,
              append: bool = False, recursive: bool = False) -> BuildReport:
        """Encode ``sources`` (``(file name, bytes)`` uploads, or paths) with the loaded model's VAE.

        ``role`` is ``negation`` (what to avoid) or ``reference`` (ordinary images, the safe side that
        the default mode contrasts against). ``append`` adds to the bank if it exists (keeping its role).
        ``recursive``: a folder's sub-folders are read too.

        The WebUI's queue lock is held for the whole build, so every image is encoded by the same model.
        """
        clean = self._guard_target(name)
        store = self.backend.store()
        cancel = threading.Event()
        self._cancels.add(cancel)
        try:
            with self.backend.gpu_lock():
                encoder = self.backend.encoder()
                return store.build(list(sources), encoder, clean, overwrite=overwrite, role=role, append=append,
                                   recursive=recursive, progress=progress, cancel=cancel,
                                   **{k: v for k, v in (card or {}).items() if v})
        finally:
            self._cancels.discard(cancel)

    def build_from_prompt(self, request: prompt_bank.PromptBankRequest, *,
                          progress: Progress | None = None) -> BuildReport:
        """Generate ``request.samples`` samples of a prompt with the loaded model through the WebUI's txt2img
        processing and write their latents as bank ``request.name`` (``prompt_bank.generate_bank``). An empty
        name means the one-click reference bank of the model's latent space
        (``prompt_bank.reference_bank_name``). The bank's name is reserved first (an existing one is refused
        before anything is generated unless ``overwrite``); the queue lock is held while generating, as for
        any generation, and a cancel (``cancel_builds``) stops the running sampling."""
        if self.backend.generate is None:
            raise BankError("building a bank from a prompt needs the WebUI's txt2img processing, which this "
                            "server does not have")
        cancel = prompt_bank.Cancel()
        self._cancels.add(cancel)
        try:
            with self.backend.gpu_lock():
                encoder = self.backend.encoder()
                name = request.name.strip() or prompt_bank.reference_bank_name(encoder.latent_space)
                clean = self._guard_target(name)
                with self.backend.store().building(clean, overwrite=request.overwrite) as path:
                    return prompt_bank.generate_bank(
                        request, path=path, encoder=encoder, generate=self.backend.generate,
                        enforced=self.backend.enforced(), host_name=self.backend.host_name(), progress=progress,
                        cancel=cancel, interrupt=self.backend.interrupt)
        finally:
            self._cancels.discard(cancel)

    def build_from_folder(self, folder: str, name: str, **options: Any) -> BuildReport:
        if not self.backend.folder_inputs_allowed():
            raise PermissionError("reading server folders is disabled on this server (--hide-ui-dir-config, "
                                  "or --listen without --enable-insecure-extension-access)")
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise BankError(f"{folder!r} is not a folder on the server")
        return self.build([path], name, **options)

    def cancel_builds(self) -> int:
        for cancel in list(self._cancels):
            cancel.set()
        return len(self._cancels)

    def rename(self, old: str, new: str) -> str:
        self.backend.guard_change(old)
        clean = self._guard_target(new)
        return self._store_with(old).rename(old, clean)

    def delete(self, name: str) -> None:
        self.backend.guard_change(name)
        self._store_with(name).delete(name)

    def read_preset(self, path: str | Path) -> Preset:
        """The card of a bank or ``.preset.json`` file; nothing is installed."""
        return self.backend.store().read_preset(path)

    def install_preset(self, path: str | Path, *, name: str | None = None, overwrite: bool = False) -> str:
        store = self.backend.store()
        preset = store.read_preset(path)
        if preset.kind == "settings":
            target = store.find_by_hash(preset.bank_hash)
            if target is not None:
                self.backend.guard_change(target)
        else:
            self._guard_target(name or Path(path).name)  # sanitize_name drops the .safetensors suffix
        return store.install_preset(path, name=name, overwrite=overwrite)

    @contextmanager
    def exported(self, name: str, *, settings_only: bool = False) -> Iterator[Path]:
        """The bank (or its settings-only preset) written to a temporary folder of this call's own, which is
        removed, file and all, when the ``with`` block ends: concurrent exports never share a file, and none
        outlives its caller."""
        store = self._store_with(name)
        with tempfile.TemporaryDirectory(prefix="safe-denoiser-export-") as folder:
            file_name = sanitize_name(name) + (PRESET_SUFFIX if settings_only else BANK_SUFFIX)
            yield store.export(name, Path(folder) / file_name, settings_only=settings_only)


def decode_base64(data: str, what: str) -> bytes:
    """Bytes of a base64 string, with or without a ``data:...;base64,`` prefix."""
    payload = re.sub(r"^data:[^,]*;base64,", "", data.strip())
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BankError(f"{what} is not valid base64") from None


@contextmanager
def uploaded_file(file_name: str, data: bytes):
    """``data`` as a file named ``file_name`` (its last path part) in a private temporary folder, removed
    afterwards. A name that names no file (``""``, ``"."``, ``".."``) or cannot be a file name is refused
    with ``BankNameError`` (``store.upload_file_name``) before anything is written."""
    base = upload_file_name(file_name)
    folder = Path(tempfile.mkdtemp(prefix="safe-denoiser-upload-"))
    try:
        path = folder / base
        path.write_bytes(data)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- HTTP routes

class UploadedImage(BaseModel):
    name: str = Field("", description="file name, for the per-file report")
    data: str = Field(..., description="base64 image bytes (a data: URL prefix is accepted)")


class BuildRequest(BaseModel):
    name: str
    images: List[UploadedImage]
    overwrite: bool = False
    role: str = Field("negation", description="negation (what to avoid) or reference (ordinary images)")
    title: str = ""
    description: str = ""
    author: str = ""
    license: str = ""
    usage_hint: str = ""


_PROMPT_DEFAULTS = prompt_bank.PromptBankRequest(name="")


class PromptBuildRequest(BaseModel):
    # defaults are ``prompt_bank.PromptBankRequest``'s, which validates the request
    name: str = Field("", description="bank name; empty: the one-click reference bank, reference-own-samples-<space> "
                                      "(with role reference and no prompt: the generic prompts, all guided)")
    prompt: str = ""
    prompts: List[str] = Field(default_factory=list, description="several prompts, one per batch in turn, instead "
                                                                 "of prompt")
    negative_prompt: str = ""
    samples: int = Field(_PROMPT_DEFAULTS.samples, description=f"how many samples, 1 to {prompt_bank.MAX_SAMPLES}")
    role: str = Field(_PROMPT_DEFAULTS.role, description="negation (what to avoid) or reference (ordinary images)")
    unguided_share: float = Field(_PROMPT_DEFAULTS.unguided_share, description="share of the samples (the first) "
                                                                              "drawn at CFG 1, 0 to 1")
    styles: List[str] = Field(default_factory=list, description="names of the WebUI's saved styles to apply")
    seed: int = Field(_PROMPT_DEFAULTS.seed, description="sample i uses seed + i; -1: random")
    steps: int = _PROMPT_DEFAULTS.steps
    cfg_scale: float = _PROMPT_DEFAULTS.cfg_scale
    sampler_name: str = _PROMPT_DEFAULTS.sampler_name
    width: int = Field(_PROMPT_DEFAULTS.width, description="0: the model's native size")
    height: int = Field(_PROMPT_DEFAULTS.height, description="0: the model's native size")
    batch_size: int = Field(_PROMPT_DEFAULTS.batch_size, description="samples generated at a time")
    overwrite: bool = False
    title: str = ""
    description: str = ""
    author: str = ""
    license: str = ""
    usage_hint: str = ""


class ImportRequest(BaseModel):
    filename: str = Field(..., description="*.safetensors (bank preset) or *.preset.json (settings only)")
    data: str = Field(..., description="base64 file bytes")
    name: Optional[str] = None
    overwrite: bool = False
    preview: bool = Field(False, description="only read and return the card; install nothing")


class RenameRequest(BaseModel):
    new_name: str


def register_routes(app, service: BankService, dependencies: list, extra_routes: Iterable[Callable] = ()) -> None:
    """The bank routes under ``ROUTE_PREFIX``, guarded by ``dependencies`` (the WebUI's API auth), and those
    each ``extra_routes(router, call)`` adds (``call`` applies these routes' exposure and error rules)."""
    from fastapi import APIRouter, HTTPException

    def call(operation: Callable[[], Any], *, writes: bool = False, downloads: bool = False) -> Any:
        if writes and not service.backend.api_writes_allowed():
            raise HTTPException(403, "bank changes through the API are disabled on this server: it is reachable "
                                     "from other machines; start it with --api-auth or "
                                     "--enable-insecure-extension-access")
        if downloads and not service.backend.api_downloads_allowed():
            raise HTTPException(403, "downloading banks through the API is disabled on this server: it is "
                                     "reachable from other machines, and a bank's latents decode back into its "
                                     "images; start it with --api-auth, or turn on \"Let API clients download "
                                     "banks from a server reachable from other machines\" in Settings -> "
                                     "Safe Denoiser (settings-only exports stay available)")
        try:
            return operation()
        except enforcement.EnforcementError as error:
            raise HTTPException(403, str(error)) from None
        except BankNotFound as error:
            raise HTTPException(404, str(error)) from None
        except (BankError, ValueError) as error:  # bad input, BankNameError included
            detail: dict[str, Any] = {"error": str(error)}
            report = getattr(error, "report", None)
            if report is not None:
                detail["report"] = report.as_dict()
            raise HTTPException(400, detail) from None

    def list_banks() -> list:
        return call(service.list)

    def inspect_bank(name: str) -> dict:
        return call(lambda: service.inspect(name))

    def build_bank(request: BuildRequest) -> dict:
        def build() -> dict:
            uploads = [(image.name or f"image {i}", decode_base64(image.data, f"images[{i}].data"))
                       for i, image in enumerate(request.images)]
            card = {key: getattr(request, key) for key in CARD_FIELDS}
            return service.build(uploads, request.name, overwrite=request.overwrite, role=request.role,
                                 card=card).as_dict()
        return call(build, writes=True)

    def build_from_prompt(request: PromptBuildRequest) -> dict:
        def build() -> dict:
            fields = request.dict()
            card = {key: fields.pop(key) for key in CARD_FIELDS}
            fields["styles"], fields["prompts"] = tuple(fields["styles"]), tuple(fields["prompts"])
            asked = prompt_bank.PromptBankRequest(**fields, card=card)
            if not asked.name.strip() and asked.role == "reference" and not (asked.prompt or asked.prompts):
                asked = prompt_bank.as_one_click_reference(asked)  # as the tab's button
            report = service.build_from_prompt(asked)
            return report.as_dict() | {"name": Path(report.path).stem}
        return call(build, writes=True)

    def import_preset(request: ImportRequest) -> dict:
        def install() -> dict:
            with uploaded_file(request.filename, decode_base64(request.data, "data")) as path:
                preset = service.read_preset(path)
                result = {"card": preset.as_dict() | {"path": request.filename}, "installed": None}
                if not request.preview:
                    result["installed"] = service.install_preset(path, name=request.name,
                                                                 overwrite=request.overwrite)
                return result
        return call(install, writes=not request.preview)

    def export_bank(name: str, settings_only: bool = False) -> dict:
        def export() -> dict:
            with service.exported(name, settings_only=settings_only) as path:
                return {"filename": path.name, "data": base64.b64encode(path.read_bytes()).decode("ascii")}
        return call(export, downloads=not settings_only)

    def rename_bank(name: str, request: RenameRequest) -> dict:
        return call(lambda: {"name": service.rename(name, request.new_name)}, writes=True)

    def delete_bank(name: str) -> dict:
        def delete() -> dict:
            service.delete(name)
            return {"deleted": sanitize_name(name)}
        return call(delete, writes=True)

    router = APIRouter(prefix=ROUTE_PREFIX, dependencies=dependencies, tags=["Safe Denoiser"])
    router.add_api_route("/banks", list_banks, methods=["GET"])
    router.add_api_route("/banks", build_bank, methods=["POST"])
    router.add_api_route("/banks/from-prompt", build_from_prompt, methods=["POST"])
    router.add_api_route("/banks/{name}", inspect_bank, methods=["GET"])
    router.add_api_route("/banks/{name}", delete_bank, methods=["DELETE"])
    router.add_api_route("/banks/{name}/export", export_bank, methods=["GET"])
    router.add_api_route("/banks/{name}/rename", rename_bank, methods=["POST"])
    router.add_api_route("/import", import_preset, methods=["POST"])
    for add in extra_routes:
        add(router, call)
    app.include_router(router)
