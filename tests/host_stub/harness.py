"""A WebUI session on the host stub: load our AlwaysOn script the way the WebUI does, point the settings
at a bank folder, put the digits model in ``shared.sd_model``, and generate through the stub's API routes."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tests import host_stub

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "safe_denoiser.py"
XYZ_SCRIPT = Path(__file__).resolve().parent / "scripts" / "xyz_grid.py"  # the WebUI's own scripts load first


class StubWebUI:
    def __init__(self, sd_model, bank_dir: Path, *, forge: bool = False, enforce: str | None = None, app=None,
                 lazy: bool = False):
        """``app``: the WebUI's FastAPI app handed to ``on_app_started`` (default: one without routes).
        On Forge the checkpoint is selected at start-up and loaded by a first generation, which ``lazy``
        leaves out (a server nobody has generated on yet); A1111 loads it at start-up."""
        host_stub.configure(forge=forge)
        from lib_safedenoise.webui import keys
        from modules import errors, options, scripts, sd_models, shared

        if forge:
            sd_models.select_checkpoint(sd_models.CheckpointInfo("stub checkpoint", lambda: sd_model))
            if not lazy:
                sd_models.forge_model_reload()
        else:
            shared.sd_model = sd_model
        shared.cmd_opts.safe_denoiser_enforce = enforce
        for key, default in ((keys.SETTING_BANK_DIR, ""), (keys.SETTING_ENFORCED_BANKS, []),
                             (keys.SETTING_HIDE_PREVIEWS, False), (keys.SETTING_DEFAULT_ENABLED, False),
                             (keys.SETTING_DEFAULT_BANKS, [])):
            shared.opts.add_option(key, options.OptionInfo(default, key))
            shared.opts.data[key] = default
        for key in ("disabled_extensions", "disable_all_extensions"):
            shared.opts.data_labels[key].restrict_api = False
        shared.opts.data[keys.SETTING_BANK_DIR] = str(bank_dir)
        shared.opts.data["live_previews_enable"] = True
        shared.opts.data["skip_early_cond"] = 0.0
        errors.recorded.clear()
        scripts.load_scripts([str(XYZ_SCRIPT), str(SCRIPT)])
        scripts.scripts_txt2img.setup_ui(False)
        scripts.scripts_img2img.setup_ui(True)
        from modules import script_callbacks

        script_callbacks.before_ui_callback()
        script_callbacks.app_started_callback(None, app if app is not None else FastAPI())
        self.shared, self.scripts, self.errors = shared, scripts, errors

    def txt2img(self, *, safe_denoiser: list | None = None, **request) -> dict:
        from modules.api import api

        if safe_denoiser is not None:
            request.setdefault("alwayson_scripts", {})["Safe Denoiser"] = {"args": safe_denoiser}
        return api.text2imgapi(request)

    def img2img(self, init_latents, *, safe_denoiser: list | None = None, **request) -> dict:
        from modules.api import api

        if safe_denoiser is not None:
            request.setdefault("alwayson_scripts", {})["Safe Denoiser"] = {"args": safe_denoiser}
        return api.img2imgapi(request, init_latents)

    def xyz_cell(self, axis_label: str, value, *, safe_denoiser: list, **request) -> dict:
        """One cell of an X/Y/Z plot: the axis applies its value to ``p``, then the generation runs."""
        from modules import processing, scripts
        from modules.api.api import script_args

        xyz = next(d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
        axis = next(a for a in xyz.axis_options if a.label == axis_label)
        runner = scripts.scripts_txt2img
        p = processing.StableDiffusionProcessingTxt2Img(
            **request, scripts=runner,
            script_args=script_args(runner, {"alwayson_scripts": {"Safe Denoiser": {"args": safe_denoiser}}}))
        axis.apply(p, axis.type(value), [value])
        self.shared.state.begin()
        processed = processing.process_images(p)
        return {"images": processed.images, "info": processed.js(), "p": p, "axis": axis}
