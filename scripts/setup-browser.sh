#!/usr/bin/env bash
# The dashboard's browser tests drive Debian's headless Chromium through chromedriver.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-browser: chromium and chromedriver are missing and apt-get is not available; install Chromium and its chromedriver, then run this again." >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "setup-browser: installing Debian's chromium and chromium-driver"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
