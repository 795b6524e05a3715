"""Follows modules/scripts.py: the ``Script`` base class, ``AlwaysVisible``, and a ``ScriptRunner`` that
builds every AlwaysOn script's UI once per tab (txt2img and img2img each get their own instance), records
``args_from``/``args_to``, and calls each hook as ``hook(p, *p.script_args[args_from:args_to], **kwargs)``
inside try/except that reports the error and goes on (a script's exception never stops a generation).
``postprocess_batch_list`` hands every script the same ``PostprocessBatchListArgs``, whose ``images`` list a
script may change (the caller, modules/processing.py, goes on with ``pp.images``)."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections import namedtuple

from modules import errors

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list[ScriptClassData] = []
scripts_txt2img: "ScriptRunner" = None
scripts_img2img: "ScriptRunner" = None


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True


class ScriptRunner:
    def __init__(self):
        self.alwayson_scripts: list[Script] = []
        self.inputs: list = []
        self.infotext_fields: list = []
        self.paste_field_names: list = []

    def initialize_scripts(self, is_img2img):
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
            if script.show(is_img2img) is AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)

    def setup_ui(self, is_img2img):
        """modules/scripts.py ``setup_ui_for_section`` / ``create_script_ui_inner`` under one gr.Blocks."""
        import gradio as gr

        with gr.Blocks():
            for script in self.alwayson_scripts:
                controls = script.ui(is_img2img) or []
                script.args_from = len(self.inputs)
                self.inputs.extend(controls)
                script.args_to = len(self.inputs)
                self.infotext_fields += script.infotext_fields or []
                self.paste_field_names += script.paste_field_names or []

    def default_args(self) -> list:
        """What modules/api/api.py ``init_default_script_args`` builds: each control's default value."""
        return [component.value for component in self.inputs]

    def _run(self, hook, p, **kwargs):
        for script in self.alwayson_scripts:
            method = getattr(script, hook, None)
            if method is None:
                continue
            try:
                method(p, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._run("before_process", p)

    def process(self, p):
        self._run("process", p)

    def before_process_batch(self, p, **kwargs):
        self._run("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._run("process_batch", p, **kwargs)

    def before_hr(self, p):
        self._run("before_hr", p)

    def postprocess_batch(self, p, images, **kwargs):
        for script in self.alwayson_scripts:
            method = getattr(script, "postprocess_batch", None)
            if method is None:
                continue
            try:
                method(p, *p.script_args[script.args_from:script.args_to], images=images, **kwargs)
            except Exception:
                errors.report(f"Error running postprocess_batch: {script.filename}", exc_info=True)

    def postprocess_batch_list(self, p, pp, **kwargs):
        for script in self.alwayson_scripts:
            method = getattr(script, "postprocess_batch_list", None)
            if method is None:
                continue
            try:
                method(p, pp, *p.script_args[script.args_from:script.args_to], **kwargs)
            except Exception:
                errors.report(f"Error running postprocess_batch_list: {script.filename}", exc_info=True)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            method = getattr(script, "postprocess", None)
            if method is None:
                continue
            try:
                method(p, processed, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running postprocess: {script.filename}", exc_info=True)


def load_scripts(paths: list[str]) -> None:
    """modules/scripts.py ``load_scripts``: clear the callbacks, import each file as its own module, collect
    its Script subclasses, then build the txt2img and img2img runners."""
    global scripts_txt2img, scripts_img2img
    from modules import script_callbacks

    script_callbacks.clear_callbacks()
    scripts_data.clear()
    for path in paths:
        name = os.path.basename(path)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for _, script_class in inspect.getmembers(module, inspect.isclass):
            if issubclass(script_class, Script) and script_class is not Script:
                scripts_data.append(ScriptClassData(script_class, path, os.path.dirname(path), module))
    scripts_txt2img, scripts_img2img = ScriptRunner(), ScriptRunner()
    scripts_txt2img.initialize_scripts(False)
    scripts_img2img.initialize_scripts(True)
