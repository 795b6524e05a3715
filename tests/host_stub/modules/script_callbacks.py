"""Follows modules/script_callbacks.py: registration, the per-category order cache (rebuilt only when a
list's length changes), removal by function (``==``, so equal bound methods match), the CFG param classes
with their constructor order, and dispatchers that report a callback's exception and go on."""

from __future__ import annotations

import dataclasses
import inspect
import os

from modules import errors


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond,
                 denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: any
    name: str = "unnamed"


callback_map = {f"callbacks_{category}": [] for category in (
    "app_started", "model_loaded", "ui_tabs", "ui_settings", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg",
    "infotext_pasted", "script_unloaded", "before_ui", "after_component")}
ordered_callbacks_map: dict[str, list] = {}


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else "unknown file"
    callback_name = f"base/{os.path.basename(filename)}/{category}" + (f"/{name}" if name is not None else "")
    unique_callback_name = callback_name
    for index in range(1000):
        if not any(x.name == unique_callback_name for x in callbacks):
            break
        unique_callback_name = f"{callback_name}-{index + 1}"
    callbacks.append(ScriptCallback(filename, fun, unique_callback_name))


def ordered_callbacks(category, unordered_callbacks=None):
    if unordered_callbacks is None:
        unordered_callbacks = callback_map.get("callbacks_" + category, [])
    callbacks = ordered_callbacks_map.get(category)
    if callbacks is not None and len(callbacks) == len(unordered_callbacks):
        return callbacks
    callbacks = unordered_callbacks.copy()
    ordered_callbacks_map[category] = callbacks
    return callbacks


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()
    ordered_callbacks_map.clear()


def _dispatch(category, job, *args):
    for c in ordered_callbacks(category):
        try:
            c.callback(*args)
        except Exception:
            report_exception(c, job)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _dispatch("cfg_denoiser", "cfg_denoiser_callback", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _dispatch("cfg_denoised", "cfg_denoised_callback", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _dispatch("cfg_after_cfg", "cfg_after_cfg_callback", params)


def infotext_pasted_callback(infotext: str, params: dict):
    _dispatch("infotext_pasted", "infotext_pasted", infotext, params)


def app_started_callback(demo, app):
    _dispatch("app_started", "app_started_callback", demo, app)


def ui_settings_callback():
    _dispatch("ui_settings", "ui_settings_callback")


def ui_tabs_callback():
    res = []
    for c in ordered_callbacks("ui_tabs"):
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, "ui_tabs_callback")
    return res


def before_ui_callback():
    _dispatch("before_ui", "before_ui")


def after_component_callback(component, **kwargs):
    for c in ordered_callbacks("after_component"):
        try:
            c.callback(component, **kwargs)
        except Exception:
            report_exception(c, "after_component_callback")


def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(callback_to_remove)
    for ordered_callback_list in ordered_callbacks_map.values():
        for callback_to_remove in [cb for cb in ordered_callback_list if cb.callback == callback_func]:
            ordered_callback_list.remove(callback_to_remove)


def _register(category):
    def register(callback, *, name=None):
        add_callback(callback_map[f"callbacks_{category}"], callback, name=name, category=category)
    register.__name__ = f"on_{category}"
    return register


on_app_started = _register("app_started")
on_model_loaded = _register("model_loaded")
on_ui_tabs = _register("ui_tabs")
on_ui_settings = _register("ui_settings")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_ui = _register("before_ui")
on_after_component = _register("after_component")
