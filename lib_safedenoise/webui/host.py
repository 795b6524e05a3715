"""The one place where the extension touches the WebUI (``modules``); every import of it is lazy.

Everything else in ``lib_safedenoise`` is a pure library. Supported hosts: AUTOMATIC1111 v1.10.x and
Forge / reForge (same callback API, different batching). SD.Next no longer calls the CFG callbacks and is
detected so the UI can say plainly that it is unsupported.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any, Callable, Sequence

A1111, FORGE, REFORGE, SDNEXT = "a1111", "forge", "reforge", "sdnext"
LOG_PREFIX = "[Safe Denoiser]"
BANK_FOLDER_NAME = "safe-denoiser"


@lru_cache(maxsize=1)
def host_kind() -> str:
    """Which WebUI we run in: ``a1111``, ``forge``, ``reforge`` or ``sdnext`` (unsupported).

    Forge ships ``modules_forge`` (forge_version); reForge ships ``modules_forge`` too but keeps the ldm
    ``ldm_patched`` backend; SD.Next has ``modules.scripts_manager`` and no ``modules.sd_samplers_cfg_denoiser``.
    """
    import importlib.util

    def present(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    if present("modules.scripts_manager") and not present("modules.sd_samplers_cfg_denoiser"):
        return SDNEXT
    if present("modules_forge"):
        return REFORGE if present("ldm_patched") else FORGE
    return A1111


def unsupported_host_message() -> str | None:
    """A plain sentence for the UI and log when this WebUI cannot run the extension, else None."""
    if host_kind() == SDNEXT:
        return ("SD.Next is not supported: it no longer calls the CFG denoiser callbacks that Safe Denoiser "
                "corrects the sampling through, so enabling it would have no effect.")
    return None


def log_problem(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr)


# --------------------------------------------------------------------------- settings and flags

def opts_value(key: str, default: Any = None) -> Any:
    from modules import shared

    return getattr(shared.opts, key, default)


def cmd_opt(name: str, default: Any = None) -> Any:
    from modules import shared

    return getattr(shared.cmd_opts, name, default)


def protect_options_from_api(keys: Sequence[str]) -> None:
    """Make ``/sdapi/v1/options`` and ``override_settings`` unable to change ``keys``.

    Both go through ``Options.set(..., is_api=True)``, which refuses options marked ``restrict_api``
    (modules/options.py); the settings page (a local operator) still can.
    """
    from modules import shared

    for key in keys:
        info = shared.opts.data_labels.get(key)
        if info is not None:
            info.restrict_api = True


def honour_restricted_options_on_api(app) -> None:
    """Forge: make ``POST /sdapi/v1/options`` leave ``restrict_api`` options alone, as A1111's does.

    A1111 and reForge apply the request with ``opts.set(k, v, is_api=True)`` (modules/api/api.py
    ``set_config``); Forge hands it to ``modules.sysinfo.set_config`` with the default ``is_api=False``, which
    skips that check. The route is replaced by one that drops the restricted keys, then calls Forge's handler.
    """
    if host_kind() != FORGE:
        return
    from fastapi.routing import APIRoute

    for index, route in enumerate(app.router.routes):
        if (isinstance(route, APIRoute) and route.path == "/sdapi/v1/options" and "POST" in route.methods
                and not hasattr(route.endpoint, "unrestricted_endpoint")):
            app.router.routes[index] = APIRoute(route.path, _options_setter(route.endpoint), methods=["POST"],
                                                dependencies=route.dependencies)


def _options_setter(unrestricted: Callable[[dict], Any]) -> Callable[[dict], Any]:
    def set_options(req: dict[str, Any]):
        from modules import shared

        labels = shared.opts.data_labels
        return unrestricted({key: value for key, value in req.items()
                             if not getattr(labels.get(key), "restrict_api", False)})

    set_options.unrestricted_endpoint = unrestricted
    return set_options


def hide_live_previews(p) -> None:
    """Turn live previews off for this generation only (they show x0 before our correction).

    Called from ``before_process``: ``process_images`` applies ``p.override_settings`` after it and restores
    the previous values when the generation ends (modules/processing.py).
    """
    p.override_settings["live_previews_enable"] = False


def abort_generation() -> None:
    """Stop the generation before its first batch (fail closed): the WebUI checks this flag per batch."""
    from modules import shared

    shared.state.interrupted = True


def default_bank_dir() -> str:
    """``<models dir>/safe-denoiser``: honours ``--models-dir`` and ``--data-dir``."""
    from modules import paths

    return os.path.join(paths.models_path, BANK_FOLDER_NAME)


# --------------------------------------------------------------------------- model

# The family flags ``sd_models.set_model_type`` sets, first match wins: flag -> (family, latent space).
MODEL_FAMILY_FLAGS = (("is_sd3", "sd3", "sd3"), ("is_ssd", "ssd", "sdxl"), ("is_sdxl", "sdxl", "sdxl"),
                      ("is_sd2", "sd2", "sd1"), ("is_sd1", "sd1", "sd1"))


def _flagged_family(sd_model) -> tuple[str, str] | None:
    return next(((family, space) for flag, family, space in MODEL_FAMILY_FLAGS if getattr(sd_model, flag, False)),
                None)


def model_latent_space(sd_model=None) -> str:
    """The latent-space id (``lib_safedenoise.banks.spaces.LATENT_SPACES``) of the loaded model.

    Read from the family flags ``sd_models.set_model_type`` sets; a model may also name its space
    directly (``latent_space`` attribute: the digits model of the tests does).
    """
    if sd_model is None:
        from modules import shared

        sd_model = shared.sd_model
    explicit = getattr(sd_model, "latent_space", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    flagged = _flagged_family(sd_model)
    if flagged is not None:
        return flagged[1]
    # Forge sets no family flag for Flux (backend/diffusion_engine/flux.py); its VAE has 16 channels
    return {4: "sd1", 16: "flux"}.get(model_latent_channels(sd_model), "unknown")


def model_latent_channels(sd_model) -> int:
    forge_vae = getattr(getattr(sd_model, "forge_objects", None), "vae", None)
    if forge_vae is not None and getattr(forge_vae, "latent_channels", None):
        return int(forge_vae.latent_channels)
    return int(getattr(sd_model, "latent_channels", 4))


# --------------------------------------------------------------------------- sampling

def eps_alphas_cumprod(denoiser):
    """``alphas_cumprod`` when ``on_cfg_after_cfg`` receives eps (A1111's DDIM/PLMS/UniPC), else None.

    A1111 routes the timestep samplers through ``CFGDenoiserTimesteps`` (modules/sd_samplers_timesteps.py),
    whose model output is a noise prediction and whose "sigma" is the integer timestep. Forge and reForge
    convert DDIM to a real sigma and hand x0 to the callback for every sampler.
    """
    if host_kind() != A1111:
        return None
    from modules.sd_samplers_timesteps import CFGDenoiserTimesteps

    return denoiser.alphas if isinstance(denoiser, CFGDenoiserTimesteps) else None


def register_cfg_callbacks(on_cfg_denoiser: Callable, on_cfg_after_cfg: Callable) -> None:
    """Register both callbacks exactly once (any earlier registration of the same functions is dropped).

    Forge and reForge get these callbacks too, not the UNet patcher's post-CFG hook
    (``set_model_sampler_post_cfg_function``): that hook sees the same x0, x and sigma per image, but it also
    runs for the extra model calls other code makes with the same model options (ControlNet's reference
    preprocessor records a pass over the reference latent each step), it has no ``denoiser`` to count steps
    and find the generation, and it lives on a patcher Forge rebuilds before every sampling pass.
    """
    from modules import script_callbacks

    remove_cfg_callbacks(on_cfg_denoiser, on_cfg_after_cfg)
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="safe_denoiser")
    script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg, name="safe_denoiser")


def register_script_callbacks(*, app_started: Callable, before_ui: Callable) -> None:
    """The callbacks registered once when the script file loads (the WebUI clears them on reload)."""
    from modules import script_callbacks

    script_callbacks.on_app_started(app_started)
    script_callbacks.on_before_ui(before_ui)


def remove_cfg_callbacks(*callbacks: Callable) -> None:
    """Remove only our callbacks (remove_current_script_callbacks would drop every callback of the file)."""
    from modules import script_callbacks

    for callback in callbacks:
        script_callbacks.remove_callbacks_for_function(callback)


# --------------------------------------------------------------------------- XYZ plot

def register_xyz_axes(axes) -> None:
    """Append our axes to the built-in X/Y/Z plot script (once), if it is loaded."""
    from modules import scripts

    xyz = next((data.module for data in scripts.scripts_data
                if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid")), None)
    if xyz is None:
        return
    known = {axis.label for axis in xyz.axis_options}
    for axis in axes:
        if axis.label in known:
            continue
        kwargs = {"choices": axis.choices} if axis.choices is not None else {}
        xyz.axis_options.append(xyz.AxisOption(axis.label, axis.kind, xyz.apply_field(axis.attribute), **kwargs))


# --------------------------------------------------------------------------- banks, engine, enforcement

# --- UI, tab, settings and API routes ---

def input_accordion_class():
    """``modules.ui_components.InputAccordion``: an accordion whose header checkbox is a gradio input."""
    from modules.ui_components import InputAccordion

    return InputAccordion


def tool_button_class():
    """``modules.ui_components.ToolButton``: the small square button of the gallery's Send-to row."""
    from modules.ui_components import ToolButton

    return ToolButton


def register_after_component(callback: Callable) -> None:
    """``callback(component, **constructor kwargs)`` after each gradio component the page builds."""
    from modules import script_callbacks

    script_callbacks.on_after_component(callback)


def output_folders() -> list[str]:
    """Absolute folders the WebUI writes its images to and serves them from: every ``outdir_*`` setting
    (relative ones are relative to the WebUI's working folder, as its image saving reads them), the temporary
    image folder ``temp_dir``, and gradio's temporary folder (``GRADIO_TEMP_DIR``, else ``<tmp>/gradio``), as
    ``modules/ui_tempdir.is_gradio_temp_path`` lists them."""
    import tempfile

    from modules import shared

    keys = [key for key in shared.opts.data_labels if key.startswith("outdir_")] + ["temp_dir"]
    folders = [str(opts_value(key, "") or "") for key in keys]
    folders += [os.environ.get("GRADIO_TEMP_DIR", ""), os.path.join(tempfile.gettempdir(), "gradio")]
    return [os.path.abspath(folder) for folder in folders if folder]


def folder_inputs_allowed() -> bool:
    """Whether the tab may read server folders: not with ``--hide-ui-dir-config``, and not when the UI is
    reachable from other machines (``--listen``/``--share``/...) without ``--enable-insecure-extension-access``
    (``cmd_opts.disable_extension_access``, modules/shared_cmd_options.py)."""
    return not (cmd_opt("hide_ui_dir_config", False) or cmd_opt("disable_extension_access", False))


def api_writes_allowed() -> bool:
    """Whether API routes may write bank files: as the Extensions tab, refused on a server reachable from
    other machines without ``--enable-insecure-extension-access``, unless the API asks for a password."""
    return not cmd_opt("disable_extension_access", False) or bool(cmd_opt("api_auth", None))


def api_downloads_allowed() -> bool:
    """Whether API clients may download bank contents (a bank's latents decode back into recognisable
    images). The rule follows the one for writes: yes when only this machine reaches the server, or when the
    API asks for a password (``--api-auth``); on a server reachable from other machines without one, only if
    the operator turned on the (API-restricted) setting ``SETTING_EXPOSED_API_DOWNLOADS``."""
    from lib_safedenoise.webui.keys import SETTING_EXPOSED_API_DOWNLOADS

    return api_writes_allowed() or bool(opts_value(SETTING_EXPOSED_API_DOWNLOADS, False))


def queue_lock():
    """The lock every generation and model swap runs under (modules/call_queue.py)."""
    from modules import call_queue

    return call_queue.queue_lock


def loaded_model():
    """The loaded checkpoint, or None. Never loads one: ``shared.sd_model`` is a property that would.

    Forge loads the checkpoint lazily, on the first generation; until then ``model_data.sd_model`` holds a
    ``FakeInitialModel`` placeholder without a VAE (modules/sd_models.py), which counts as none here.
    """
    from modules import sd_models

    model = sd_models.model_data.sd_model
    placeholder = getattr(sd_models, "FakeInitialModel", None)
    return None if placeholder is not None and isinstance(model, placeholder) else model


def ready_model():
    """The checkpoint a generation would use now, loaded the way the WebUI loads it for a generation, or
    None when there is none to load. Call it under ``queue_lock``, as generations do.

    Forge: ``sd_models.forge_model_reload()``, which ``processing.manage_model_and_prompt_cache`` calls at the
    start of every generation, loads the selected checkpoint if it is not loaded yet (or another one was
    selected since) and raises ``ValueError`` when there is no checkpoint at all. A1111 and reForge load the
    checkpoint at start-up and on every change of the selection, so the loaded one is the one to use.
    """
    if host_kind() == FORGE:
        from modules import sd_models

        try:
            sd_models.forge_model_reload()
        except ValueError as error:  # "You do not have any model!": no checkpoint file to load
            log_problem(str(error))
            return None
    return loaded_model()


def loaded_latent_space() -> str | None:
    model = loaded_model()
    return None if model is None else model_latent_space(model)


def model_family(sd_model) -> str:
    """The model family (``sd1``, ``sd2``, ``sdxl``, ``ssd``, ``sd3``) from its flags, else its latent space."""
    flagged = _flagged_family(sd_model)
    return flagged[0] if flagged is not None else model_latent_space(sd_model)


class WebuiVaeEncoder:
    """The loaded checkpoint's full VAE (never TAESD) as a bank ``encoders.Encoder``.

    Each batch goes through ``images_tensor_to_samples`` (modules/sd_samplers_common.py), which moves it to
    the device, so only one batch of images is ever there. The WebUI's encodings are draws from the VAE
    posterior (``get_first_stage_encoding`` samples for SD1/SD2, sgm and SD3 sample inside
    ``encode_first_stage``), so they are made reproducible by seeding a forked RNG per batch.
    """

    pixel_channels = 3
    encode_mode = "sample"

    def __init__(self, sd_model, seed: int = 0):
        from lib_safedenoise.banks import spaces

        space = spaces.latent_space(model_latent_space(sd_model))
        self.model = sd_model
        self.latent_space, self.channels, self.family = space.id, space.channels, model_family(sd_model)
        side = space.native_size[0] * 8
        self.resolution = (side, side)
        self.seed = seed
        self._batches = 0
        try:
            from modules import sd_vae

            vae_name, vae_hash = sd_vae.get_loaded_vae_name(), sd_vae.get_loaded_vae_hash()
        except ImportError:
            vae_name = vae_hash = None
        checkpoint = getattr(getattr(sd_model, "sd_checkpoint_info", None), "name_for_extra", "checkpoint")
        self.vae_name = vae_name or f"{checkpoint} (built-in VAE)"
        self.vae_hash = vae_hash or ""

    def __call__(self, pixels):
        import torch
        from modules import devices, sd_samplers_common

        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.no_grad(), devices.autocast(), torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed + self._batches)
            latents = sd_samplers_common.images_tensor_to_samples((pixels + 1) / 2, 0, self.model)
        self._batches += 1
        return latents.float().cpu()



def register_tab_callbacks(*, ui_tabs: Callable, ui_settings: Callable, app_started: Callable) -> None:
    from modules import script_callbacks

    script_callbacks.on_ui_tabs(ui_tabs)
    script_callbacks.on_ui_settings(ui_settings)
    script_callbacks.on_app_started(app_started)


def add_settings(section: tuple[str, str], options: Sequence[tuple[str, Any, str, dict]]) -> None:
    """Register settings ``(key, default, label, extra)``. ``extra`` holds ``OptionInfo`` keyword arguments
    and: ``info`` (a hint), ``multiselect_choices`` (a callable: the setting is a multi-select of them),
    ``reload_ui`` (takes effect on Reload UI), ``folder`` (a server path: hidden, and refused by
    ``Options.__setattr__``, under ``--hide-ui-dir-config``, like the WebUI's own output folders)."""
    from modules import shared

    hide_folders = cmd_opt("hide_ui_dir_config", False)
    for key, default, label, extra in options:
        extra = dict(extra)
        info_text = extra.pop("info", None)
        choices = extra.pop("multiselect_choices", None)
        reload_ui = extra.pop("reload_ui", False)
        if extra.pop("folder", False) and hide_folders:
            extra["component_args"] = {"visible": False}
            restricted = getattr(shared.opts, "restricted_opts", None)
            if isinstance(restricted, set):
                restricted.add(key)
        if choices is not None:
            # DropdownMulti, not Dropdown(multiselect=True): the settings page re-applies component_args
            # through Dropdown.update() on every load, and gradio 3's update() rejects ``multiselect``.
            from modules.ui_components import DropdownMulti

            extra.update(component=DropdownMulti, refresh=choices,  # the settings page's refresh button
                         component_args=lambda choices=choices: {"choices": choices()})
        option = shared.OptionInfo(default, label, section=section, **extra)
        if info_text:
            option = option.info(info_text)
        shared.opts.add_option(key, option.needs_reload_ui() if reload_ui else option)


def api_auth_dependencies(app) -> list | None:
    """The dependencies (``--api-auth``'s HTTP basic check) of the WebUI's own API routes, or None when
    the WebUI's API is off (no ``--api``/``--nowebui``): then our routes are not registered either."""
    for route in getattr(app, "routes", []):
        if getattr(route, "path", None) == "/sdapi/v1/options":
            return list(route.dependencies)
    return None


# --------------------------------------------------------------------------- generating through the WebUI

def txt2img_outputs_folder() -> str:
    """Where txt2img saves its images: ``outdir_samples`` if set, else ``outdir_txt2img_samples``, as
    modules/txt2img.py picks ``outpath_samples``; relative to the WebUI's working folder, made absolute. Images
    land in dated sub-folders (``save_to_dirs``), so read it recursively."""
    folder = opts_value("outdir_samples", "") or opts_value("outdir_txt2img_samples", "")
    return os.path.abspath(folder) if folder else ""


def interrupt_generation() -> None:
    """What the WebUI's Interrupt button does (``shared.state.interrupt()``): sampling stops at its next step."""
    from modules import shared

    shared.state.interrupt()


def txt2img_latents(*, prompt: str, negative_prompt: str, styles: Sequence[str], seed: int, batch_size: int,
                    steps: int, cfg_scale: float, sampler_name: str, width: int, height: int,
                    own_script_args: Sequence[Any], own_script_title: str) -> dict[str, Any]:
    """One txt2img generation of ``batch_size`` images through the WebUI's own processing, keeping the final
    latents before they are decoded. Call under ``queue_lock``, as the WebUI's API does.

    The ``StableDiffusionProcessingTxt2Img`` is made the way ``modules/api/api.py`` ``text2imgapi`` makes it:
    on ``shared.sd_model`` (on Forge ``process_images`` first loads the selected checkpoint), with the txt2img
    script runner and every AlwaysOn script's default arguments (what ``init_default_script_args`` reads, the
    UI controls' values), ours replaced by ``own_script_args``; hires fix off, nothing saved. Our script must
    be among the runner's AlwaysOn scripts (an enforced correction runs through it): a runner whose UI was never
    built (``--nowebui`` before the first API generation) is refused. Extra networks
    in the prompt (LoRAs) and ``styles`` apply as in any generation (``setup_prompts``,
    ``extra_networks.activate``). The latents are what ``p.sample`` returns, per batch: A1111 and Forge call
    it once per batch in ``process_images_inner`` and decode right after (``post_sample`` scripts may change
    the samples before decoding; the bank keeps the sampler's own).

    Returns plain values: ``latents`` (float32 on the CPU, ``[batch_size, C, H, W]``, or None when the batch
    never sampled), ``interrupted`` (the WebUI's state was interrupted or skipped: by the Interrupt button, a
    cancel, or a fail-closed stop), ``extra_generation_params``, and what the generation really used:
    ``prompt_used``/``negative_prompt_used`` (styles applied), ``seeds``, ``sampler``, ``scheduler``,
    ``model``, ``model_hash``.
    """
    import torch
    from modules import processing, scripts, shared

    runner = scripts.scripts_txt2img
    script_args = [getattr(component, "value", None) for component in runner.inputs]
    own = next((s for s in runner.alwayson_scripts if s.title() == own_script_title), None)
    if own is None or own.args_to is None or own.args_to > len(script_args):
        from lib_safedenoise.banks.errors import BankError

        raise BankError("the txt2img scripts are not set up yet (no page built: --nowebui); run one txt2img "
                           "generation through the API first")
    script_args[own.args_from:own.args_to] = list(own_script_args)[:own.args_to - own.args_from]
    p = processing.StableDiffusionProcessingTxt2Img(
        sd_model=shared.sd_model, prompt=prompt, negative_prompt=negative_prompt, styles=list(styles), seed=seed,
        subseed=-1, subseed_strength=0, batch_size=batch_size, n_iter=1, steps=steps, cfg_scale=cfg_scale,
        sampler_name=sampler_name, width=width, height=height, enable_hr=False, do_not_save_samples=True,
        do_not_save_grid=True)
    # as text2imgapi: is_api first, so setting script_args runs only the scripts' non-UI ``setup`` hooks (the
    # built-in seed and sampler scripts would otherwise put their UI defaults over seed, steps and sampler)
    p.is_api = True
    p.scripts = runner
    p.script_args = tuple(script_args)
    kept: list = []
    sample = p.sample

    def sample_and_keep(*args, **kwargs):
        samples = sample(*args, **kwargs)
        with torch.inference_mode(False):  # Forge samples under inference_mode; keep an ordinary tensor
            kept.append(samples.detach().float().cpu().clone())
        return samples

    p.sample = sample_and_keep
    shared.state.begin(job="safe_denoiser_prompt_bank")
    try:
        processing.process_images(p)
        interrupted = bool(shared.state.interrupted or shared.state.skipped)
    finally:
        shared.state.end()
        p.close()
    return {"latents": kept[-1] if kept else None, "interrupted": interrupted,
            "extra_generation_params": dict(p.extra_generation_params),
            "prompt_used": p.all_prompts[0] if p.all_prompts else prompt,
            "negative_prompt_used": p.all_negative_prompts[0] if p.all_negative_prompts else negative_prompt,
            "seeds": [int(s) for s in p.all_seeds], "sampler": p.sampler_name,
            "scheduler": getattr(p, "scheduler", None) or "", "model": p.sd_model_name or "",
            "model_hash": p.sd_model_hash or ""}
