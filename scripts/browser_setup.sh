#!/bin/sh
# Headless browser for the browser tests (tests/browser/): Debian's Chromium and Playwright for Python.
# Idempotent: does nothing once /usr/bin/chromium, /usr/bin/chromedriver and the playwright package are there.
# Playwright drives the system Chromium (executable_path="/usr/bin/chromium"); never `playwright install`.
set -eu
cd "$(dirname "$0")/.."  # constraints.txt and the default venv are relative to the repository
PY=${1:-.venv/bin/python}

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "browser_setup: /usr/bin/chromium or /usr/bin/chromedriver is missing; run as root or: sudo apt-get install chromium chromium-driver" >&2
        exit 1
    fi
    echo "browser_setup: installing Debian's chromium and chromium-driver"
    apt-get update -q
    # fonts-liberation: a recommends of chromium, needed for readable text in screenshots
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-liberation
fi

if ! "$PY" -c "import playwright" 2>/dev/null; then
    echo "browser_setup: installing playwright (Python package only, no browser download)"
    "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt playwright
fi
