"""The "Safe Denoiser" AlwaysOn script: the WebUI's hooks, handed to ``lib_safedenoise.extension``."""

from modules import script_callbacks, scripts

from lib_safedenoise import extension, host
from lib_safedenoise.extension import CFG_HOOKS, OPEN_SESSIONS
from lib_safedenoise.generation_args import GenerationArgs


def _remove_callbacks() -> None:
    host.remove_cfg_callbacks(CFG_HOOKS.on_cfg_denoiser, CFG_HOOKS.on_cfg_after_cfg)


class SafeDenoiserScript(scripts.Script):
    def title(self):
        return extension.SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from lib_safedenoise import ui

        controls = ui.build_accordion(is_img2img)
        self.infotext_fields = list(zip(controls.components, extension.PASTE_KEYS))
        self.paste_field_names = list(extension.PASTE_KEYS)
        return controls.components

    def before_process(self, p, *args):
        if host.enforced_bank_names() and host.opts_value(extension.SETTING_HIDE_PREVIEWS, False):
            host.hide_live_previews(p)

    def process(self, p, *args):
        OPEN_SESSIONS.drop_stale()
        if not len(OPEN_SESSIONS):
            _remove_callbacks()  # left over by a generation that raised before its postprocess
        try:
            request = extension.apply_xyz_overrides(GenerationArgs.from_script_args(args), p)
        except ValueError as error:
            host.log_problem(str(error))
            p.extra_generation_params[extension.INFOTEXT_ERROR_KEY] = str(error)
            request = GenerationArgs(enabled=False)
        enforced = host.enforced_bank_names()
        if enforced:
            host.protect_options_from_api(extension.API_PROTECTED_OPTIONS)
        if not request.enabled and not enforced:
            return
        try:
            session = extension.plan_session(request, enforced, host.bank_loader(), host.engine_factory())
        except extension.EnforcementError as error:
            host.log_problem(str(error))
            p.extra_generation_params[extension.INFOTEXT_ERROR_KEY] = str(error)
            host.abort_generation()
            return
        for problem in session.problems:
            host.log_problem(problem)
        p.extra_generation_params.update(extension.infotext_values(session))
        if session.active:
            OPEN_SESSIONS.begin(p, session)
            host.register_cfg_callbacks(CFG_HOOKS.on_cfg_denoiser, CFG_HOOKS.on_cfg_after_cfg)

    def postprocess(self, p, processed, *args):
        session = OPEN_SESSIONS.end(p)
        if not len(OPEN_SESSIONS):
            _remove_callbacks()
        if session is not None:
            report = session.report()
            p.extra_generation_params[extension.REPORT_KEY] = report  # Processed.js() shares this dict
            extension.remember_report(report)


if host.unsupported_host_message():
    host.log_problem(host.unsupported_host_message())


def _protect_enforcement(demo, app):
    if host.enforced_bank_names():
        host.protect_options_from_api(extension.API_PROTECTED_OPTIONS)


script_callbacks.on_app_started(_protect_enforcement)
script_callbacks.on_infotext_pasted(lambda infotext, params: extension.unpack_infotext(params))
script_callbacks.on_before_ui(lambda: host.register_xyz_axes(
    extension.xyz_axes(host.mode_names, host.bank_names)))
