"""Follows modules/api/api.py for the routes that reach a script: ``text2imgapi``/``img2imgapi`` (script
args = the UI defaults overlaid with ``alwayson_scripts`` positional args, ``infotext`` applied through the
tab's string-keyed infotext fields without the on_infotext_pasted callbacks, ``override_settings``) and
``set_config`` (``/sdapi/v1/options``: ``opts.set(k, v, is_api=True)`` for each key)."""

from __future__ import annotations

from modules import infotext_utils, processing, scripts, shared


def script_args(runner, request: dict) -> list:
    """``init_script_args``: the UI defaults, then values read from ``infotext``, then ``alwayson_scripts``."""
    infotext_args = {}
    if request.get("infotext"):
        params = infotext_utils.parse_generation_parameters(request["infotext"])
        for component, target in runner.infotext_fields:
            if component in runner.inputs:
                value = target(params) if callable(target) else params.get(target)
                if value is not None:
                    infotext_args[runner.inputs.index(component)] = type(component.value)(value)
    args = runner.default_args()
    for index, value in infotext_args.items():
        args[index] = value
    for title, spec in (request.get("alwayson_scripts") or {}).items():
        script = next(s for s in runner.alwayson_scripts if s.title().lower() == title.lower())
        values = spec.get("args", [])
        for index in range(min(script.args_to - script.args_from, len(values))):
            args[script.args_from + index] = values[index]
    return args


def _run(p_class, runner, request: dict, **fields) -> dict:
    shared.state.begin(job="api")
    known = ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler_name", "batch_size", "n_iter",
             "width", "height", "override_settings", "override_settings_restore_afterwards", "s_min_uncond",
             "enable_hr", "hr_scale", "hr_second_pass_steps", "denoising_strength")
    kwargs = {k: v for k, v in request.items() if k in known}
    p = p_class(**kwargs, **fields, scripts=runner, script_args=script_args(runner, request))
    processed = processing.process_images(p)
    return {"images": processed.images, "info": processed.js(), "p": p}


def text2imgapi(request: dict) -> dict:
    return _run(processing.StableDiffusionProcessingTxt2Img, scripts.scripts_txt2img, request)


def img2imgapi(request: dict, init_latents) -> dict:
    return _run(processing.StableDiffusionProcessingImg2Img, scripts.scripts_img2img, request,
                init_latents=init_latents)


def set_config(request: dict) -> None:
    for k, v in request.items():
        shared.opts.set(k, v, is_api=True)
