"""Command-line flags of the extension; the WebUI calls ``preload(parser)`` of every enabled extension
before it parses its arguments (modules/script_loading.py ``preload_extensions``)."""


def preload(parser):
    parser.add_argument(
        "--safe-denoiser-enforce", type=str, default=None, metavar="BANK[,BANK]",
        help="Safe Denoiser: apply these negation banks to every generation (UI and API); requests, "
             "settings overrides, pasted infotext and the bank tab cannot switch them off or delete them")
