#!/usr/bin/env bash
# Installs what moco-server needs to build and run, once: a Python virtual environment in .venv
# holding torch==2.11.0 (its libtorch is what tch 0.24 links against), torchvision (used by the
# benchmarks and the export checks) and timm (the ViT export check), and gloo's headers for the
# distributed trainer. A second run finds the ready markers and installs nothing.
# A failed install removes the half-made environment, so no later run trusts it.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
TORCHVISION_VERSION=0.26.0
VENV=.venv
READY="$VENV/.moco-ready"
WANT="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"

fail() {
    echo "setup: $*" >&2
    exit 1
}

command -v cargo >/dev/null 2>&1 ||
    fail "cargo was not found. Install Rust with rustup (https://rustup.rs), then run this again."

# Python packages beyond torch, installed into the same environment: timm, whose
# VisionTransformer the ViT export check loads, and CUDA's compiler-side headers (crt, cccl),
# which the NCCL process group's headers include and the torch wheel's CUDA packages lack. Its own
# marker, so adding one never reinstalls torch.
EXTRAS="timm==1.0.15 nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85"
EXTRAS_READY="$VENV/.moco-extras"

install_extras() {
    if [ -f "$EXTRAS_READY" ] && [ "$(cat "$EXTRAS_READY")" = "$EXTRAS" ]; then
        return 0
    fi
    echo "setup: installing $EXTRAS into $VENV"
    "$VENV/bin/pip" install --disable-pip-version-check --progress-bar on $EXTRAS ||
        fail "pip could not install $EXTRAS. Check that this machine reaches the Python package index (pip config list shows a mirror, if any), then run this again."
    echo "$EXTRAS" >"$EXTRAS_READY"
}

# gloo's headers, which libtorch's ProcessGroupGloo.hpp includes and the torch wheel lacks
# (csrc/dist.cpp builds the Gloo process group against them): Debian's libgloo-dev.
install_gloo_headers() {
    if [ -f /usr/include/gloo/algorithm.h ] || [ -n "${GLOO_INCLUDE_DIR:-}" ]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        fail "gloo's headers are missing and apt-get is not available: install gloo's headers (Debian/Ubuntu: libgloo-dev) and set GLOO_INCLUDE_DIR to the directory holding gloo/, then run this again."
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "setup: installing Debian's libgloo-dev (gloo's headers, for distributed training)"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libgloo-dev >/dev/null; } ||
        fail "apt-get could not install libgloo-dev. Check that this machine reaches Debian's package archive, then run this again."
}
install_gloo_headers

if [ -f "$READY" ] && [ "$(cat "$READY")" = "$WANT" ] && [ -x "$VENV/bin/python" ] &&
    [ -f "$VENV/libtorch/lib/libtorch.so" ]; then
    install_extras
    exit 0
fi

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 ||
    fail "python3 was not found. Install Python 3.10 or newer (Debian/Ubuntu: apt-get install python3 python3-venv), then run this again."
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
    fail "$("$PYTHON" --version 2>&1) is too old: torch $TORCH_VERSION needs Python 3.10 or newer."
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 ||
    fail "the Python venv module is missing. Debian/Ubuntu: apt-get install python3-venv; then run this again."

echo "setup: creating $VENV with $WANT (a one-time download of about 4.6 GB)"
rm -rf "$VENV"
cleanup() {
    echo "setup: the install did not finish; removed $VENV so the next run starts clean." >&2
    rm -rf "$VENV"
}
trap cleanup ERR
"$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/pip" install --disable-pip-version-check --progress-bar on $WANT; then
    trap - ERR
    cleanup
    fail "pip could not install $WANT. Check that this machine reaches the Python package index (pip config list shows a mirror, if any), then run this again."
fi
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" ||
    { trap - ERR; cleanup; fail "the installed torch is not $TORCH_VERSION."; }
# torch-sys reads LIBTORCH=.venv/libtorch (.cargo/config.toml): a stable path whatever the
# Python version in the site-packages path.
ln -sfn "$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')" "$VENV/libtorch"
trap - ERR
echo "$WANT" >"$READY"
install_extras
echo "setup: $VENV is ready"
