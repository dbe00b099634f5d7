#!/usr/bin/env bash
# Installs what tests/test_ui_browser.py needs: Debian's chromium and its chromedriver, and selenium in .venv.
# No browser download: selenium drives the system chromedriver. Idempotent; safe to call from CI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        as_root=""
        [ "$(id -u)" -ne 0 ] && as_root="sudo"
        $as_root apt-get update -qq
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver fonts-dejavu-core >/dev/null
    else
        echo "install-browser: no apt-get here; install chromium and chromedriver yourself" >&2
        exit 1
    fi
fi

PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import selenium" 2>/dev/null; then
    "$PY" -m pip install -q "$(grep -E "^selenium==" requirements.txt)" -c requirements.txt
fi
echo "install-browser: $(chromium --version 2>/dev/null | head -1); $(chromedriver --version 2>/dev/null | head -1)"
