#!/usr/bin/env bash
# Creates .venv/ with everything the tests and the standalone commands need.
# Re-running it is quick: pip is skipped when requirements.txt has not changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d's native library links against libusb; Debian does not always ship it.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; })
    else
        echo "warning: libusb-1.0-0 is missing (open3d needs it); install it with: sudo apt-get install libusb-1.0-0" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt dev/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # (grep drops the noise of pip's optional local indexes that do not exist on every machine)
    pip_install() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
    pip_install --upgrade pip
    pip_install -r requirements.txt
    # The WebUI's own ldm modules, byte-identical in this package; its own pins are ancient, so no deps.
    pip_install --no-deps stable-diffusion-sdkit==2.1.5
    # k-diffusion as the WebUI 1.10.1 clones it (0.0.16, the same files), for the tests' WebUI stand-in. No deps:
    # they include torchvision (no CPU build for our torch), clean-fid, CLIP and wandb, which only its training and
    # evaluation modules import; requirements.txt has what k_diffusion.sampling needs.
    pip_install --no-deps k-diffusion==0.0.16
    # pydantic 2 beside the venv's pydantic 1 (the WebUI's), for the test that runs the settings package on it
    # (the Forge 2 backend's pydantic): only that test puts this folder on sys.path.
    rm -rf .venv/pydantic2
    # (pip's resolver then warns that the venv's fastapi wants pydantic 1: true there, not where this goes)
    .venv/bin/python -m pip install -q --target .venv/pydantic2 "pydantic>=2,<3" \
        2> >(grep -v -e "is ignored: it is neither" -e "dependency resolver" -e "requires pydantic" >&2)
    echo "$want" > "$stamp"
fi
