"""Follows modules/shared.py, shared_state.py and shared_options.py (only what sampling reads)."""

from __future__ import annotations

import argparse
import sys

from modules.options import OptionInfo, Options
from modules.styles import StyleDatabase

forge = False  # set by tests/host_stub.configure

cmd_opts = argparse.Namespace(safe_denoiser_enforce=None, hide_ui_dir_config=False, no_prompt_history=True,
                              disable_extension_access=False)

opts = Options({
    "skip_early_cond": OptionInfo(0.0, "Ignore negative prompt during early sampling"),
    "s_min_uncond_all": OptionInfo(False, "NGMS: Skip every step"),
    "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
    "pad_cond_uncond": OptionInfo(False, "Pad prompt/negative prompt"),
    "pad_cond_uncond_v0": OptionInfo(False, "Pad prompt/negative prompt (v0)"),
    "live_previews_enable": OptionInfo(True, "Show live previews of the created image"),
    "live_preview_content": OptionInfo("Prompt", "Live preview subject"),
    "show_progress_every_n_steps": OptionInfo(1, "Live preview display period"),
    "img2img_fix_steps": OptionInfo(False, "With img2img, do exactly the amount of steps the slider specifies"),
    "eta_ddim": OptionInfo(0.0, "Eta for DDIM"),
    "disabled_extensions": OptionInfo([], "Disable these extensions"),
    "disable_all_extensions": OptionInfo("none", "Disable all extensions"),
    "infotext_skip_pasting": OptionInfo([], "Disregard fields from pasted infotext"),
    "outdir_samples": OptionInfo("", "Output directory for images; if empty, defaults to three directories below"),
    "outdir_txt2img_samples": OptionInfo("outputs/txt2img-images", "Output directory for txt2img images"),
})
prompt_styles = StyleDatabase()


class State:
    """modules/shared_state.State (``begin`` resets the flags, ``end`` the job count): ``sampling_step`` is set by the sampler's per-step callback, *after* the
    model call of that step, so during step i's model call it still reads i-1 (and 0 for steps 0 and 1)."""

    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job_count = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.previews: list = []

    def begin(self, job: str = "(unknown)"):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job_count = -1
        self.previews = []

    def end(self):
        self.job_count = 0

    def interrupt(self):
        self.interrupted = True


class _Tqdm:
    def update(self):
        pass


state = State()
total_tqdm = _Tqdm()


class Shared(sys.modules[__name__].__class__):
    """modules/shared_items.py ``Shared``: ``shared.sd_model`` reads and sets ``sd_models.model_data``'s
    model (tests set the digits model; on Forge, before the first generation, it is the placeholder)."""

    @property
    def sd_model(self):
        from modules import sd_models

        return sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        from modules import sd_models

        sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = Shared
