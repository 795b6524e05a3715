"""``python -m lib_safedenoise``: see ``lib_safedenoise.cli``."""

import sys

from lib_safedenoise.cli import main

sys.exit(main())
