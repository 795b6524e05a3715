"""The "Safe Denoiser" AlwaysOn script: thin glue from the WebUI's hooks to ``lib_safedenoise.extension``."""

from modules import scripts

from lib_safedenoise import extension, host


class SafeDenoiserScript(scripts.Script):
    def title(self):
        return extension.SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from lib_safedenoise import ui

        controls = ui.build_accordion(is_img2img)
        self.infotext_fields = list(zip(controls.components, extension.INFOTEXT_READERS))
        self.paste_field_names = [str(reader) for reader in extension.INFOTEXT_READERS]
        return controls.components

    def before_process(self, p, *args):
        extension.before_generation(p)

    def process(self, p, *args):
        extension.begin_generation(p, args)

    def postprocess(self, p, processed, *args):
        extension.end_generation(p)


if host.unsupported_host_message():
    host.log_problem(host.unsupported_host_message())
host.register_script_callbacks(
    app_started=extension.protect_enforcement,
    before_ui=lambda: host.register_xyz_axes(extension.xyz_axes(host.mode_names, host.bank_names)))
