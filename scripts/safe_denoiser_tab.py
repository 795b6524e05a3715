"""The "Safe Denoiser" tab, its settings and its HTTP routes: glue from the WebUI's callbacks to
``lib_safedenoise.webui.tab`` and ``lib_safedenoise.webui.api``."""

from lib_safedenoise.webui import host, keys, server

SETTINGS_SECTION = ("safe_denoiser", "Safe Denoiser")


def ui_tabs():
    from lib_safedenoise.webui import keys, tab

    return [(tab.build_tab(), keys.TAB_TITLE, "safe_denoiser_tab")]


def ui_settings():
    host.add_settings(SETTINGS_SECTION, [
        (keys.SETTING_BANK_DIR, "", "Bank folder",
         {"info": f"empty: {host.default_bank_dir()} (follows --models-dir / --data-dir)",
          "folder": True, "restrict_api": True}),
        (keys.SETTING_DEFAULT_ENABLED, False, "Safe Denoiser on by default (new page loads and API requests)",
         {"reload_ui": True}),
        (keys.SETTING_DEFAULT_BANKS, [], "Banks selected by default",
         {"multiselect_choices": server.bank_names, "reload_ui": True}),
        (keys.SETTING_ENFORCED_BANKS, [], "Enforced banks: applied to every generation, UI and API, "
         "whatever a request asks; they cannot be deleted or replaced",
         {"multiselect_choices": server.bank_names, "restrict_api": True,
          "info": f"the --{keys.ENFORCE_CMD_OPT.replace('_', '-')} launch flag adds to these; "
                  "the API cannot change this setting"}),
        (keys.SETTING_HIDE_PREVIEWS, False, "Hide live previews while banks are enforced",
         {"restrict_api": True, "info": "previews show each step before the correction"}),
        (keys.SETTING_EXPOSED_API_DOWNLOADS, False,
         "Let API clients download banks from a server reachable from other machines",
         {"restrict_api": True,
          "info": "with --listen (or --share, ...) and no --api-auth, GET /safe-denoiser/v1/banks/NAME/export is "
                  "refused unless this is on: a bank's latents decode back into its images; "
                  "the API cannot change this setting"}),
    ])


def app_started(demo, app):
    dependencies = host.api_auth_dependencies(app)
    if dependencies is None:  # the WebUI's API is off (no --api / --nowebui): so are ours
        return
    from lib_safedenoise.webui import api, negate_image

    negator = negate_image.host_negator()
    api.register_routes(app, negator.service, dependencies, extra_routes=[negate_image.add_route(negator)])


def gallery_buttons():
    from lib_safedenoise.webui import negate_image

    return negate_image.GalleryButtons(negate_image.host_negator, host.tool_button_class())


host.register_tab_callbacks(ui_tabs=ui_tabs, ui_settings=ui_settings, app_started=app_started)
host.register_after_component(gallery_buttons())
