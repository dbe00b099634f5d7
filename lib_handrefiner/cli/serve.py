"""`python -m lib_handrefiner serve`: the REST API and the hand-box editor without the WebUI."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, Tuple

from lib_handrefiner.cli.common import add_mesh_arguments
from lib_handrefiner.mesh import MODELS_DIR_ENV
from lib_handrefiner.settings import HandRefinerArgs

TINY_NOTICE = ("No weights configured: serving TINY RANDOM models (for trying the UI and API; the refined hands "
               "are noise). Pass --checkpoint and --controlnet for real results.")
# Tiny random models refine noise either way; few steps at a small crop keep the page responsive on a CPU.
TINY_DEFAULTS = {"steps": 4, "crop_resolution": 128}


def default_tiny_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "handrefiner" / "tiny-models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default: loopback only).")
    parser.add_argument("--port", type=int, default=7861, help="Port to listen on (default: %(default)s).")
    parser.add_argument("--checkpoint", type=Path, help="SD 1.5 inpainting checkpoint (.safetensors/.ckpt).")
    parser.add_argument("--controlnet", type=Path, help="HandRefiner depth ControlNet file.")
    parser.add_argument("--models-dir", type=Path,
                        help="Folder with the WebUI's layout (ControlNet/, Stable-diffusion/, handrefiner/) whose "
                             "models requests may name; Mesh Graphormer's files in its handrefiner/ or itself "
                             f"(default: the {MODELS_DIR_ENV} environment variable).")
    add_mesh_arguments(parser, "requests that leave mesh_model at auto", models_dir=False)
    parser.add_argument("--tiny-dir", type=Path, default=default_tiny_dir(),
                        help="Where the tiny models are built when no weights are given (default: %(default)s).")
    parser.add_argument("--device", default="cpu",
                        help="Torch device the models run on, e.g. cuda or cuda:1 (default: %(default)s).")


def resolve_models(ns: argparse.Namespace) -> Tuple[Path, Path, Optional[str]]:
    """(checkpoint, controlnet, notice): the given files, or tiny models with a loud notice."""
    if (ns.checkpoint is None) != (ns.controlnet is None):
        raise SystemExit("serve: give both --checkpoint and --controlnet, or neither (tiny models)")
    if ns.checkpoint is not None:
        for path in (ns.checkpoint, ns.controlnet):
            if not path.is_file():
                raise SystemExit(f"serve: {path} is not a file")
        return ns.checkpoint, ns.controlnet, None
    from lib_handrefiner.tiny import ensure_tiny_models
    tiny = ensure_tiny_models(ns.tiny_dir)
    return tiny.checkpoint, tiny.controlnet, TINY_NOTICE


def create_app(service, notice: Optional[str] = None, defaults: HandRefinerArgs = HandRefinerArgs()):
    """FastAPI app with /handrefiner/* and the editor page at /, sharing one lock."""
    import gradio as gr
    from fastapi import FastAPI

    from lib_handrefiner.admission import max_queue
    from lib_handrefiner.api import mount
    from lib_handrefiner.ui import create_blocks

    lock = threading.Lock()
    app = FastAPI(title="HandRefiner")
    mount(app, service, lock)
    blocks = create_blocks(service, lock, defaults=defaults, notice=notice or "")
    blocks.queue(concurrency_count=1, max_size=max_queue())  # the editor's queue: as bounded as the API's
    app = gr.mount_gradio_app(app, blocks, path="/")
    _serve_only_own_files(app)
    return app


def _serve_only_own_files(app) -> Path:
    """Gradio 3.41's `/file=` serves any file under the working directory it was started in (symlinks out of it
    included) and under the shared upload folder (GRADIO_TEMP_DIR, /tmp/gradio). Point both at a new private
    folder: `/file=` then serves only what the editor itself made (gradio's own list of its output files) and
    what was uploaded to this server. Returns the folder."""
    from gradio.routes import App

    owned = Path(tempfile.mkdtemp(prefix="handrefiner-serve-"))
    (owned / "uploads").mkdir()
    gradio_apps = [route.app for route in app.routes if isinstance(getattr(route, "app", None), App)]
    if len(gradio_apps) != 1:
        raise RuntimeError(f"serve: expected one mounted Gradio app, found {len(gradio_apps)}")
    gradio_apps[0].cwd = str(owned / "files")  # an empty folder that nothing writes to
    gradio_apps[0].uploaded_file_dir = str(owned / "uploads")
    return owned


def run(ns: argparse.Namespace) -> int:
    import uvicorn

    from lib_handrefiner.service import StandaloneService

    checkpoint, controlnet, notice = resolve_models(ns)
    defaults = HandRefinerArgs(**TINY_DEFAULTS) if notice else HandRefinerArgs()
    if notice:
        banner = "!" * len(notice)
        print(f"{banner}\n{notice}\n{banner}", file=sys.stderr, flush=True)
    models_dir = ns.models_dir or (Path(os.environ[MODELS_DIR_ENV]) if os.environ.get(MODELS_DIR_ENV) else None)
    service = StandaloneService(checkpoint, controlnet, models_dir, device=ns.device, mesh_model=ns.mesh,
                                mesh_fallback=ns.mesh_fallback)
    app = create_app(service, notice, defaults)
    print(f"HandRefiner: editor at http://{ns.host}:{ns.port}/ , API at http://{ns.host}:{ns.port}/handrefiner/ "
          f"(docs at /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="warning")
    return 0
