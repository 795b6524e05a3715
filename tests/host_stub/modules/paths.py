"""Follows modules/paths_internal.py: ``models_path`` is ``<data dir>/models`` unless --models-dir."""

import os
import tempfile

data_path = os.environ.get("SD_WEBUI_STUB_DATA") or tempfile.mkdtemp(prefix="webui-stub-")
models_path = os.path.join(data_path, "models")
