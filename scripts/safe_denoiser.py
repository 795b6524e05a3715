"""The "Safe Denoiser" AlwaysOn script: thin glue from the WebUI's hooks to ``lib_safedenoise.webui.hooks``.

Its positional arguments are ``webui.args.ARG_NAMES``, parsed once into ``GenerationArgs`` by ``hooks``."""

from modules import scripts

from lib_safedenoise.webui import hooks, host, infotext, keys, server, xyz


class SafeDenoiserScript(scripts.Script):
    def title(self):
        return keys.SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from lib_safedenoise.webui import accordion

        controls = accordion.build_accordion(is_img2img)
        self.infotext_fields = list(zip(controls.components, infotext.INFOTEXT_READERS))
        self.paste_field_names = [str(reader) for reader in infotext.INFOTEXT_READERS]
        return controls.components

    def before_process(self, p, *args):
        hooks.before_generation(p)

    def process(self, p, *args):
        hooks.begin_generation(p, args)

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        hooks.discard_unprotected_images(p, pp)

    def postprocess(self, p, processed, *args):
        hooks.end_generation(p)


if host.unsupported_host_message():
    host.log_problem(host.unsupported_host_message())
host.register_script_callbacks(
    app_started=hooks.protect_enforcement,
    before_ui=lambda: host.register_xyz_axes(xyz.xyz_axes(server.mode_names, server.bank_names)))
