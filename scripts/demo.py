"""Run the demo workflow on a real DragBench photo through the host's HTTP API.

Uses a server already answering at --url, or starts one (and stops it afterwards). Picks the best
checkpoint present in the host's models/checkpoints: a user's SD1.5-family checkpoint, else the
trained ShapeDrag model, else the tiny random one (whose pictures are noise).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import harness  # noqa: E402
import workflows  # noqa: E402

DEMO_WORKFLOW = os.environ.get("DRAGFUSION_DEMO_WORKFLOW", "attention_drag.json")
TINY = harness.TINY_CKPT
TRAINED = "dragfusion_shapedrag.safetensors"


SD15_PROBE = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def is_sd15_family(path: str) -> bool:
    """An SD1.5-family checkpoint: its first cross-attention reads 768-wide CLIP-L tokens (header only)."""
    if not path.endswith(".safetensors"):
        return False
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            return SD15_PROBE in f.keys() and f.get_slice(SD15_PROBE).get_shape()[-1] == 768 and \
                "conditioner.embedders.1.model.ln_final.weight" not in f.keys()
    except Exception:  # unreadable or not a checkpoint: not a candidate
        return False


def pick_checkpoint(names: list[str], folders: list[str] | None = None) -> tuple[str | None, str]:
    """The best checkpoint present: yours (SD1.5-family, checked when ``folders`` is given), else the
    trained ShapeDrag model, else the tiny random one."""
    own = [n for n in names if n not in (TINY, TRAINED)]
    if folders is not None:
        paths = {n: next((os.path.join(d, n) for d in folders if os.path.isfile(os.path.join(d, n))), "") for n in own}
        own = [n for n in own if is_sd15_family(paths[n])]
    if own:
        return own[0], "your checkpoint"
    if TRAINED in names:
        return TRAINED, "the trained ShapeDrag model"
    if TINY in names:
        return TINY, "the tiny random test checkpoint: its pictures are noise"
    return None, "no checkpoint"


def set_widgets(prompt: dict, object_info: dict, sample: str | None, ckpt: str | None, seed: int):
    for node in prompt.values():
        ins = node["inputs"]
        if node["class_type"] == "DragFusionLoadDragBenchSample" and sample:
            ins["sample"] = sample
        if "ckpt_name" in ins and ckpt:
            ins["ckpt_name"] = ckpt
        for key in ("seed", "noise_seed"):
            if key in ins and not isinstance(ins[key], list):
                ins[key] = seed
        if node["class_type"] == "SaveImage":
            ins["filename_prefix"] = "dragfusion_demo"


def fetch_outputs(server, history: dict) -> list[bytes]:
    images = []
    for node_out in history.get("outputs", {}).values():
        for im in node_out.get("images", []):
            if im.get("type") != "output":
                continue
            q = urllib.parse.urlencode({"filename": im["filename"], "subfolder": im.get("subfolder", ""), "type": "output"})
            with urllib.request.urlopen(f"{server.url}/view?{q}", timeout=60) as r:
                images.append(r.read())
    return images


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("DRAGFUSION_URL", "http://127.0.0.1:8188"),
                    help="a running ComfyUI with the pack; one is started if none answers")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "demo.png"), help="where to write the result PNG")
    ap.add_argument("--sample", default=None, help="sample folder relative to ComfyUI's input folder")
    ap.add_argument("--workflow", default=DEMO_WORKFLOW, help="example_workflows/ file to run")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000, help="seed (varied so the host re-runs)")
    a = ap.parse_args()

    harness.ensure_data_link()
    server, own = harness.Server(), False
    server.url = a.url.rstrip("/")
    try:
        server.get("/system_stats", timeout=2)
        print(f"[demo] using the ComfyUI at {server.url}")
    except OSError:
        server = harness.Server().start()
        own = True
        print(f"[demo] started ComfyUI at {server.url} (log {server.log_path})")
    try:
        info = server.get("/object_info")
        missing = [n for n in ("DragFusionLoadDragBenchSample",) if n not in info]
        if missing:
            sys.exit(f"[demo] the pack is not loaded in that ComfyUI (missing {missing}); see its log")
        ckpts = info.get("CheckpointLoaderSimple", {}).get("input", {}).get("required", {}).get("ckpt_name", [[]])[0]
        ckpt, why = pick_checkpoint(list(ckpts), [os.path.join(harness.COMFYUI_DIR, "models", "checkpoints")])
        ui = workflows.load(a.workflow)
        prompt = workflows.ui_to_api(ui, info)
        set_widgets(prompt, info, a.sample, ckpt, a.seed)
        uses_ckpt = any("ckpt_name" in n["inputs"] for n in prompt.values())
        if uses_ckpt:
            print(f"[demo] checkpoint: {ckpt} ({why})")
        t0 = time.time()
        hist = server.run(prompt, timeout=1800)
        if hist["status"]["status_str"] != "success":
            err = harness.execution_error(hist)
            sys.exit(f"[demo] the workflow failed: {json.dumps(err, indent=1)[:3000]}")
        images = fetch_outputs(server, hist)
        if not images:
            sys.exit("[demo] the workflow produced no output image")
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "wb") as f:
            f.write(images[-1])
        print(f"[demo] {a.workflow} ran in {time.time() - t0:.1f} s")
        print(os.path.abspath(a.out))
    finally:
        if own:
            server.stop()


if __name__ == "__main__":
    main()
