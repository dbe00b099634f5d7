from __future__ import annotations

import os
import tempfile

script_path = os.environ.get("HANDREFINER_STUB_WEBUI_DIR") or tempfile.mkdtemp(prefix="webui-stub-")
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
