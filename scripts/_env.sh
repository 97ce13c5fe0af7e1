# Shared paths for the scripts/ commands. Sourced, never run.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DRAGFUSION_VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
COMFYUI_DIR="${COMFYUI_DIR:-$REPO/.host/ComfyUI}"
PACK_NAME="dragfusion"
export REPO VENV PY COMFYUI_DIR PACK_NAME
