"""Every name the extension registers with the WebUI, defined once: the script's title, settings keys, the
launch flag, infotext keys and the attributes it sets on a generation's ``p``."""

SCRIPT_TITLE = "Safe Denoiser"
TAB_TITLE = "Safe Denoiser"

# Settings (``shared.opts`` keys); the UI helper registers them in on_ui_settings.
SETTING_BANK_DIR = "safe_denoiser_bank_dir"
SETTING_DEFAULT_ENABLED = "safe_denoiser_default_enabled"
SETTING_DEFAULT_BANKS = "safe_denoiser_default_banks"
SETTING_ENFORCED_BANKS = "safe_denoiser_enforced_banks"
SETTING_HIDE_PREVIEWS = "safe_denoiser_hide_previews_when_enforced"
SETTING_EXPOSED_API_DOWNLOADS = "safe_denoiser_exposed_api_downloads"

# The launch flag ``--safe-denoiser-enforce BANK[,BANK]`` (registered by the repository's preload.py, which
# the WebUI loads by path before this package is importable) lands in ``cmd_opts`` under this name.
ENFORCE_CMD_OPT = "safe_denoiser_enforce"


# Infotext keys: only letters, digits, space, "-", "_" and "/" parse back (infotext_utils.re_param_code).
INFOTEXT_KEY = "Safe Denoiser"
INFOTEXT_FIRED_KEY = "Safe Denoiser fired"
INFOTEXT_ERROR_KEY = "Safe Denoiser error"
INFOTEXT_ENFORCED_KEY = "Safe Denoiser enforced"
# Not in the infotext (added after the images' infotexts are written): the API response's
# ``info.extra_generation_params`` carries the per-image report under this key.
REPORT_KEY = "Safe Denoiser report"

# ``p`` attribute holding the generation's session; the CFG callbacks find it through ``denoiser.p``.
SESSION_ATTR = "safe_denoiser_session"

FIRST_PASS, HIRES_PASS = "first", "hires"
