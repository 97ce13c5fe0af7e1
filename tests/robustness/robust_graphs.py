"""API-format graphs for the robustness suite: a cheap AttentionDrag edit at 64 px (tiny checkpoint)
and a cheap PNI / dual-branch graph, each with knobs for the bad-input cases."""
from __future__ import annotations

import copy
import io
import json
import urllib.parse
import urllib.request

import harness
from robust_files import TAG

SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"
SIZE = 64
GOOD_POINTS = {"version": 1, "width": SIZE, "height": SIZE, "pairs": [{"handle": [24, 24], "target": [40, 28]}]}


def sample_path(variant: int = 0) -> str:
    """The same folder spelled differently ('./' prefixes): a fresh cache key, identical content."""
    return "./" * variant + SAMPLE


def edit_graph(variant: int = 0, steps: int = 4, edit_step: int = 2, points=None, prefix: str = TAG + "robust",
               save_latent: bool = False) -> dict:
    """LoadDragBenchSample -> 64x64 -> points JSON -> Invert+Capture -> AutoMask(union with a square)
    -> SemanticMove -> Interpolate -> KV consistency -> KSamplerAdvanced -> VAEDecode -> SaveImage."""
    pts = json.dumps(points if points is not None else GOOD_POINTS)
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": harness.TINY_CKPT}},
        "2": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "lcm", "zsnr": False}},
        "3": {"class_type": "DragFusionLoadDragBenchSample", "inputs": {"sample": sample_path(variant), "size": "fit 128 (multiple of 8)"}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "bilinear", "width": SIZE,
                                                     "height": SIZE, "crop": "disabled"}},
        "5": {"class_type": "DragFusionPointsJSON", "inputs": {"image": ["4", 0], "points_json": pts, "allow_empty": False}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of an animal"}},
        "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
        "8": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "9": {"class_type": "DragFusionInvertCapture", "inputs": {
            "model": ["2", 0], "latent": ["8", 0], "steps": steps, "edit_step": edit_step, "scheduler": "simple",
            "cfg": 1.0, "layers": "latent resolution", "custom_layers": "", "capture_steps": "all",
            "capture_values": True, "positive": ["6", 0], "points": ["5", 0]}},
        "10": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE, "height": SIZE}},
        "11": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 24, "height": 24}},
        "12": {"class_type": "MaskComposite", "inputs": {"destination": ["10", 0], "source": ["11", 0], "x": 16, "y": 16,
                                                         "operation": "add"}},
        "13": {"class_type": "DragFusionAutoMask", "inputs": {"capture": ["9", 1], "points": ["5", 0], "tau": 2.0,
                                                              "reference": "mean", "steps": "all", "dilation": 0,
                                                              "mask": ["12", 0], "mask_mode": "union"}},
        "14": {"class_type": "DragFusionSemanticMove", "inputs": {"capture": ["9", 1], "latent": ["9", 0], "points": ["5", 0],
                                                                  "mask": ["13", 0], "steps": "all"}},
        "15": {"class_type": "DragFusionAttentionInterpolate", "inputs": {"capture": ["9", 1], "latent": ["14", 0],
                                                                          "mask": ["14", 1], "fill": "attention", "mode": "drag",
                                                                          "steps": "all", "seed": 0, "chunk": 512}},
        "16": {"class_type": "DragFusionKVConsistency", "inputs": {"model": ["2", 0], "capture": ["9", 1], "enabled": True,
                                                                   "strength": 1.0}},
        "17": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["16", 0], "add_noise": "disable", "noise_seed": 0, "steps": steps, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["15", 0], "start_at_step": edit_step, "end_at_step": 10000,
            "return_with_leftover_noise": "disable"}},
        "18": {"class_type": "VAEDecode", "inputs": {"samples": ["17", 0], "vae": ["1", 2]}},
        "19": {"class_type": "SaveImage", "inputs": {"images": ["18", 0], "filename_prefix": prefix}},
    }
    if save_latent:
        g["20"] = {"class_type": "SaveLatent", "inputs": {"samples": ["17", 0], "filename_prefix": prefix + "_latent"}}
    return g


def pni_graph(variant: int = 0, steps: int = 2, dual: bool = False) -> dict:
    """LoadDragBenchSample -> 64x64 -> VAEEncode -> PNI Invert -> SamplerCustomAdvanced with the PNI
    Guider (or, dual=True, the Dual-Branch Guided Sampler, task drag) -> VAEDecode -> PreviewImage."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": harness.TINY_CKPT}},
        "3": {"class_type": "DragFusionLoadDragBenchSample", "inputs": {"sample": sample_path(variant), "size": "fit 128 (multiple of 8)"}},
        "4": {"class_type": "ImageScale", "inputs": {"image": ["3", 0], "upscale_method": "bilinear", "width": SIZE,
                                                     "height": SIZE, "crop": "disabled"}},
        "5": {"class_type": "DragFusionPointsJSON", "inputs": {"image": ["4", 0], "points_json": json.dumps(GOOD_POINTS),
                                                               "allow_empty": False}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of an animal"}},
        "8": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "30": {"class_type": "DragFusionPNIInvert", "inputs": {
            "model": ["1", 0], "latent": ["8", 0], "source": ["6", 0], "steps": steps, "cfg": 5.0, "lam": 0.02,
            "prox": "L1", "eta": 0.1, "guidance_until": steps, "scheduler": "ddim_uniform"}},
        "31": {"class_type": "DragFusionPNIGuider", "inputs": {"model": ["1", 0], "inversion": ["30", 0], "target": ["6", 0]}},
        "32": {"class_type": "DisableNoise", "inputs": {}},
        "33": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "34": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["32", 0], "guider": ["31", 0],
                                                                 "sampler": ["33", 0], "sigmas": ["30", 2],
                                                                 "latent_image": ["30", 1]}},
        "35": {"class_type": "VAEDecode", "inputs": {"samples": ["34", 0], "vae": ["1", 2]}},
        "36": {"class_type": "PreviewImage", "inputs": {"images": ["35", 0]}},
    }
    if dual:
        g["31"] = {"class_type": "DragFusionDualBranchGuider", "inputs": dual_inputs()}
    return g


def dual_inputs() -> dict:
    return {"model": ["1", 0], "inversion": ["30", 0], "target": ["6", 0], "task": "drag", "w_edit": 4.0,
            "w_share": 6.0, "energy_scale": 0.25, "guidance_fraction": 0.6, "kv_replace": True,
            "kv_layers": "decoder", "kv_mode": "replace", "kv_fraction": 1.0, "points": ["5", 0],
            "offset_x": 0.0, "offset_y": 0.0, "scale": 1.0, "pad_left": 0, "pad_right": 0, "pad_top": 0,
            "pad_bottom": 0, "landmarks_json": "", "point_radius": 16.0, "seed": 0}


def clone(g: dict) -> dict:
    return copy.deepcopy(g)


def output_files(hist: dict, kind: str = "images") -> list:
    return [f for out in hist.get("outputs", {}).values() for f in out.get(kind, [])]


def view(server, f: dict) -> bytes:
    q = urllib.parse.urlencode({"filename": f["filename"], "subfolder": f.get("subfolder", ""), "type": f.get("type", "output")})
    with urllib.request.urlopen(f"{server.url}/view?{q}", timeout=30) as r:
        return r.read()


def pixels(server, hist: dict) -> list:
    import numpy as np
    from PIL import Image
    return [np.asarray(Image.open(io.BytesIO(view(server, f)))) for f in output_files(hist)]
