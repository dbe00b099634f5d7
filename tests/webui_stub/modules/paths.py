"""The WebUI's folders: a temporary one, or $HANDREFINER_STUB_WEBUI_DIR (set by tests before importing)."""
from __future__ import annotations

import os
import tempfile

script_path = os.environ.get("HANDREFINER_STUB_WEBUI_DIR") or tempfile.mkdtemp(prefix="webui-stub-")
models_path = os.path.join(script_path, "models")
extensions_dir = os.path.join(script_path, "extensions")
