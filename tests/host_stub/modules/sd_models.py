"""Follows modules/sd_models.py: the loaded checkpoint lives in ``model_data``; ``shared.sd_model`` is a
property over it (modules/shared_items.py ``Shared``).

A1111 v1.10.1 loads the selected checkpoint at start-up, so a session sets ``shared.sd_model`` directly.
Forge (stable-diffusion-webui-forge dfdcbab6, modules/sd_models.py) loads it lazily: until the first
generation ``model_data.sd_model`` is a ``FakeInitialModel``, a placeholder without a VAE; start-up only
records the selected checkpoint in ``model_data.forge_loading_parameters``
(modules_forge/main_entry.py ``refresh_model_loading_parameters``), and ``forge_model_reload()``, which
``processing.process_images`` calls before every generation (``manage_model_and_prompt_cache``), loads it
when it differs from the loaded one (``forge_hash``). ``CheckpointInfo`` stands in for the real one: a
name, and (stub only) how to build the model.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch


class FakeInitialModel:
    """Forge's placeholder, as is: "a dummy class for backward compatibility when model is not load"."""

    def __init__(self):
        self.cond_stage_model = None
        self.chunk_length = 75

    def get_prompt_lengths_on_ui(self, prompt):
        r = len(prompt.strip('!,. ').replace(' ', ',').replace('.', ',').replace('!', ',').replace(',,', ',')
                .replace(',,', ',').replace(',,', ',').replace(',,', ',').split(','))
        return r, math.ceil(max(r, 1) / self.chunk_length) * self.chunk_length


class CheckpointInfo:
    def __init__(self, name: str, load: Callable[[], Any]):
        self.name = self.name_for_extra = self.title = name
        self.load = load


class SdModelData:
    def __init__(self, *, forge: bool = False):
        self.sd_model = FakeInitialModel() if forge else None
        self.forge_loading_parameters: dict = {}
        self.forge_hash = ''

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v):
        self.sd_model = v


model_data = SdModelData()


def reset(*, forge: bool) -> None:
    """A freshly started server: nothing loaded (Forge: the placeholder), no checkpoint selected."""
    global model_data
    model_data = SdModelData(forge=forge)


def select_checkpoint(checkpoint_info: CheckpointInfo | None) -> None:
    """Forge's ``refresh_model_loading_parameters`` (start-up, or a change of the checkpoint dropdown)."""
    model_data.forge_loading_parameters = dict(checkpoint_info=checkpoint_info, additional_modules=[],
                                               unet_storage_dtype=None)


@torch.inference_mode()
def forge_model_reload():
    current_hash = str(model_data.forge_loading_parameters)
    if model_data.forge_hash == current_hash:
        return model_data.sd_model, False
    if model_data.sd_model:
        model_data.sd_model = None
    checkpoint_info = model_data.forge_loading_parameters['checkpoint_info']
    if checkpoint_info is None:
        raise ValueError('You do not have any model! Please download at least one model in [models/Stable-diffusion].')
    sd_model = checkpoint_info.load()
    sd_model.sd_checkpoint_info = checkpoint_info
    model_data.set_sd_model(sd_model)
    model_data.forge_hash = current_hash
    return sd_model, True
