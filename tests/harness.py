"""Shared test harness: the real ComfyUI host in-process and as a real server over HTTP.

Nothing here stubs ComfyUI: the host is the one scripts/setup installed (or COMFYUI_DIR).
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFYUI_DIR = os.environ.get("COMFYUI_DIR") or os.path.join(REPO, ".host", "ComfyUI")
DATA = os.path.join(REPO, "data")   # the repository's own DragBench / Drag100 samples (data/README.md)
TINY_CKPT = "dragfusion_tiny_sd15.safetensors"
PACK_PREFIX = "DragFusion"


def import_pack(name: str = "dragfusion"):
    """Import the repo as a package (for pure-torch unit tests) without ComfyUI on the path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_HOST = {}


def load_host():
    """Import the real ComfyUI in this process (CPU) and load the custom nodes; returns ``nodes``."""
    if "nodes" in _HOST:
        return _HOST["nodes"]
    if not os.path.isfile(os.path.join(COMFYUI_DIR, "main.py")):
        raise RuntimeError(f"no ComfyUI at {COMFYUI_DIR}: run scripts/setup")
    if COMFYUI_DIR not in sys.path:
        sys.path.insert(0, COMFYUI_DIR)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.model_management  # noqa: F401  (after args.cpu)
    # main.py imports the server (and with it ComfyUI's utils/ package) before nodes.py puts comfy/ first
    # on sys.path; in that order 'utils' stays the package and comfy_extras/nodes_images.py imports
    import utils.install_util  # noqa: F401
    import nodes
    # In a thread of its own: the browser tests' playwright keeps an event loop running in this one.
    failure = []

    def init():
        try:
            _HOST["import_failed"] = asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        except BaseException as e:  # re-raised below, in the caller's thread
            failure.append(e)

    t = threading.Thread(target=init)
    t.start()
    t.join()
    if failure:
        raise failure[0]
    _HOST["nodes"] = nodes
    return nodes


def run_node(node_id: str, **inputs):
    """Execute one node class of the real host as the executor does (a class clone, under
    torch.inference_mode like execution.py); returns the NodeOutput."""
    import torch
    nodes = load_host()
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    clone = cls.PREPARE_CLASS_CLONE({})
    with torch.inference_mode():
        return clone.EXECUTE_NORMALIZED(**inputs)


def pack_module(suffix: str):
    """A module of the pack as the host imported it (its package name is the custom_nodes path), e.g.
    pack_module("nodes.inversion"): the classes the loaded nodes use."""
    node_module = load_host().NODE_CLASS_MAPPINGS["DragFusionInvertCapture"].__module__   # "<pack>.nodes.inversion"
    return sys.modules[node_module.rsplit(".nodes.", 1)[0] + "." + suffix]


def pack_node_ids(nodes_module) -> list[str]:
    return sorted(k for k in nodes_module.NODE_CLASS_MAPPINGS if k.startswith(PACK_PREFIX))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real ComfyUI server process on 127.0.0.1 with the pack loaded."""

    def __init__(self, port: int | None = None, extra_args: tuple = ()):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = list(extra_args)
        self.proc = None
        os.makedirs(os.path.join(REPO, ".host"), exist_ok=True)
        self.log_path = os.path.join(REPO, ".host", f"server-{self.port}.log")

    def start(self, timeout: float = 120.0) -> "Server":
        python = os.environ.get("DRAGFUSION_PYTHON") or sys.executable
        cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", *self.extra_args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_DIR, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log: {self.log_path}\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s; log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def post(self, path: str, payload, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            return {"http_error": e.code, "body": json.loads(e.read() or b"null")}
        return json.loads(body) if body else None

    def queue(self, prompt: dict) -> dict:
        """POST /prompt; returns the server's answer (prompt_id or the validation error)."""
        return self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.get(f"/history/{prompt_id}")
            if h and prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                st = h[prompt_id]["status"]
                if st.get("status_str") in ("success", "error"):
                    return h[prompt_id]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        r = self.queue(prompt)
        if "prompt_id" not in r:
            raise AssertionError(f"prompt rejected at validation: {json.dumps(r)[:2000]}")
        return self.wait(r["prompt_id"], timeout)


def cheap_prompt(prompt: dict, pni_steps: int = 6) -> dict:
    """An API-format example prompt made cheap for CI: the tiny checkpoint (of the workflow's family), DragBench samples at
    128 px, PNI / dual-branch schedules of at most ``pni_steps`` steps (PNI's guidance_until capped
    with it). Changes ``prompt`` in place and returns it."""
    for node in prompt.values():
        ins = node["inputs"]
        if "ckpt_name" in ins and not isinstance(ins["ckpt_name"], list) and ins["ckpt_name"] not in TINY_CKPTS.values():
            ins["ckpt_name"] = TINY_CKPT      # a workflow for SD2.x / SDXL names that family's tiny checkpoint already
        if node["class_type"] == "DragFusionLoadDragBenchSample":
            ins["size"] = "fit 128 (multiple of 8)"
        if node["class_type"] == "DragFusionPNIInvert" and isinstance(ins.get("steps"), int):
            ins["steps"] = min(ins["steps"], pni_steps)
            if isinstance(ins.get("guidance_until"), int):
                ins["guidance_until"] = min(ins["guidance_until"], ins["steps"])
    return prompt


def execution_error(history: dict) -> dict | None:
    for kind, msg in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return msg
    return None


def ensure_data_link(comfyui_dir: str = COMFYUI_DIR) -> str:
    """The repository's data/, visible in the host's input folder as dragfusion_data/ (as scripts/setup
    links it). A link pointing elsewhere (e.g. an old link to the shared data) is replaced; a real
    folder of that name is left alone."""
    link = os.path.join(comfyui_dir, "input", "dragfusion_data")
    if os.path.islink(link) and os.path.realpath(link) != os.path.realpath(DATA):
        os.unlink(link)
    if not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(DATA, link)
    return link


# The tiny test checkpoints scripts/setup builds (scripts/make_tiny_checkpoint.py --arch ...): random
# weights, reduced UNets that the host detects as each family, full-size text encoders, TAESD VAEs.
TINY_CKPTS = {
    "sd15": TINY_CKPT,
    "sd2": "dragfusion_tiny_sd2.safetensors",    # detected as eps: v_prediction=True below for SD2-v
    "sdxl": "dragfusion_tiny_sdxl.safetensors",  # CLIP-L + bigG: ~1.8 GB, loads in seconds
}

_TINY_LOADED = {}


def call_node(node_id: str, **inputs) -> tuple:
    """Execute one core node of the real host (a V1 class or a V3 io.ComfyNode) under
    torch.inference_mode, as the executor does; returns its outputs as a tuple."""
    import torch
    nodes = load_host()
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "PREPARE_CLASS_CLONE"):
        return tuple(run_node(node_id, **inputs).result)
    with torch.inference_mode():
        return tuple(getattr(cls(), cls.FUNCTION)(**inputs))


def load_tiny_checkpoint(arch: str = "sd15", v_prediction: bool = False) -> tuple:
    """(model, clip, vae) of the tiny ``arch`` checkpoint ('sd15', 'sd2', 'sdxl'), loaded through the
    host's own CheckpointLoaderSimple once per process (like the executor's cache of a loader's output:
    the same objects every call, so clone a MODEL before patching it, as ComfyUI's nodes do).
    ``v_prediction``: the model through ComfyUI's ModelSamplingDiscrete ('v_prediction', zsnr off), the
    host's own way to run a v-prediction checkpoint it detects as eps (the SD2 one is detected as eps)."""
    if arch not in TINY_CKPTS:
        raise ValueError(f"arch {arch!r}: one of {sorted(TINY_CKPTS)}")
    if arch not in _TINY_LOADED:
        import folder_paths
        load_host()
        name = TINY_CKPTS[arch]
        if not folder_paths.get_full_path("checkpoints", name):
            raise FileNotFoundError(f"{name} is not in the host's models/checkpoints: run scripts/setup")
        _TINY_LOADED[arch] = call_node("CheckpointLoaderSimple", ckpt_name=name)[:3]
    model, clip, vae = _TINY_LOADED[arch]
    if v_prediction:
        (model,) = call_node("ModelSamplingDiscrete", model=model, sampling="v_prediction", zsnr=False)
    return model, clip, vae


def drop_tiny_checkpoints(*archs: str):
    """Forget load_tiny_checkpoint's objects for ``archs`` (all when none given), so that their memory
    can be freed (the SDXL one holds ~4.5 GB on CPU: its text encoders run in float32)."""
    for arch in archs or list(_TINY_LOADED):
        _TINY_LOADED.pop(arch, None)
    import gc
    gc.collect()
    if "comfy.model_management" in sys.modules:   # the host's list of loaded models: drop the dead ones
        sys.modules["comfy.model_management"].cleanup_models()
