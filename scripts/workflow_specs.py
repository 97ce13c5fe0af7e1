"""The example workflows, written once as small specs (see scripts/workflows.py).

Each entry: file name -> (nodes, notes). Node: {"id", "type", "pos", "widgets", "links"}.
"""

import json

SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"

PREVIEW_DRAG_POINTS = [
    {"id": 1, "type": "DragFusionLoadDragBenchSample", "pos": [50, 100],
     "widgets": {"sample": SAMPLE, "size": "fit 512 (multiple of 8)"}},
    {"id": 2, "type": "DragFusionPreviewDragPoints", "pos": [450, 100],
     "links": {"image": [1, 0], "points": [1, 1], "mask": [1, 2]}},
    {"id": 3, "type": "SaveImage", "pos": [850, 100], "widgets": {"filename_prefix": "dragfusion_preview"},
     "links": {"images": [2, 0]}},
]

SPECS = {
    "preview_drag_points.json": (PREVIEW_DRAG_POINTS, [
        "DragFusion: load a DragBench sample (image, drag instruction, mask) and draw its numbered "
        "handle -> target arrows with the editable region tinted. The sample path is relative to "
        "ComfyUI's input folder; scripts/setup links the pack's own data/ there as dragfusion_data/ (and the node finds it in the pack without the link)."]),
}

# AttentionDrag (paper defaults: LCM schedule, 10 steps, edit at step 5, no CFG, tau 2.0).
LCM_LORA_NODE = 40
LCM_LORA_FILE = "lcm-lora-sdv1-5.safetensors"
LCM_LORA_TITLE = "LCM-LoRA for SD1.5 (bypassed; Ctrl+B to use it)"
def _attentiondrag_front() -> list:
    """Nodes 1-7 of both AttentionDrag workflows: checkpoint (LCM sampling), sample, prompt, VAE encode,
    Inversion with Attention Capture (output 0 the latent at step 5, output 1 the capture)."""
    return [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [50, 100], "widgets": {"ckpt_name": "dragfusion_tiny_sd15.safetensors"}},
        # the paper's LCM-distilled UNet: SD1.5's LCM-LoRA from models/loras; bypassed (mode 4) so the workflow runs
        # without the file -- un-bypass it (Ctrl+B) with your SD1.5 checkpoint; scripts/demo does when the file is there
        {"id": LCM_LORA_NODE, "type": "LoraLoaderModelOnly", "pos": [50, 250], "mode": 4, "title": LCM_LORA_TITLE,
         "widgets": {"lora_name": LCM_LORA_FILE, "strength_model": 1.0}, "links": {"model": [1, 0]}},
        {"id": 2, "type": "ModelSamplingDiscrete", "pos": [50, 350], "widgets": {"sampling": "lcm", "zsnr": False},
         "links": {"model": [LCM_LORA_NODE, 0]}},
        {"id": 3, "type": "DragFusionLoadDragBenchSample", "pos": [50, 450],
         "widgets": {"sample": SAMPLE, "size": "fit 512 (multiple of 8)"}},
        {"id": 4, "type": "CLIPTextEncode", "pos": [400, 100], "links": {"clip": [1, 1], "text": [3, 3]}},
        {"id": 5, "type": "ConditioningZeroOut", "pos": [400, 300], "links": {"conditioning": [4, 0]}},
        {"id": 6, "type": "VAEEncode", "pos": [400, 450], "links": {"pixels": [3, 0], "vae": [1, 2]}},
        {"id": 7, "type": "DragFusionInvertCapture", "pos": [750, 100],
         "widgets": {"steps": 10, "edit_step": 5, "scheduler": "simple", "cfg": 1.0, "layers": "auto",
                     "capture_values": True},
         "links": {"model": [2, 0], "latent": [6, 0], "positive": [4, 0]}},
    ]


def _attentiondrag_tail(first: int, x: int, model: list, latent: list, side_links: dict, prefix: str) -> list:
    """KSamplerAdvanced from step 5 of 10 (ids from ``first``, column ``x``) -> VAEDecode -> preview, and the
    side-by-side picture saved under ``prefix``."""
    k, dec, side = first, first + 1, first + 3
    return [
        {"id": k, "type": "KSamplerAdvanced", "pos": [x, 100],
         "widgets": {"add_noise": "disable", "noise_seed": 0, "steps": 10, "cfg": 1.0, "sampler_name": "euler",
                     "scheduler": "simple", "start_at_step": 5, "end_at_step": 10000, "return_with_leftover_noise": "disable"},
         "links": {"model": model, "positive": [4, 0], "negative": [5, 0], "latent_image": latent}},
        {"id": dec, "type": "VAEDecode", "pos": [x + 350, 100], "links": {"samples": [k, 0], "vae": [1, 2]}},
        {"id": first + 2, "type": "PreviewImage", "pos": [x + 350, 250], "links": {"images": [dec, 0]}},
        {"id": side, "type": "DragFusionSideBySide", "pos": [x + 350, 550],
         "links": {"original": [3, 0], "result": [dec, 0], **side_links}},
        {"id": first + 4, "type": "SaveImage", "pos": [x + 700, 550], "widgets": {"filename_prefix": prefix},
         "links": {"images": [side, 0]}},
    ]


ATTENTION_DRAG = _attentiondrag_front() + [
    {"id": 8, "type": "DragFusionAutoMask", "pos": [1100, 100],
     "widgets": {"tau": 4.0, "reference": "mean", "steps": "all", "dilation": 0, "mask_mode": "union"},
     "links": {"capture": [7, 1], "points": [3, 1], "mask": [3, 2]}},
    {"id": 9, "type": "DragFusionSemanticMove", "pos": [1100, 350], "widgets": {"steps": "all"},
     "links": {"capture": [7, 1], "latent": [7, 0], "points": [3, 1], "mask": [8, 0]}},
    {"id": 10, "type": "DragFusionAttentionInterpolate", "pos": [1450, 100],
     "widgets": {"fill": "attention", "mode": "drag", "steps": "all"},
     "links": {"capture": [7, 1], "latent": [9, 0], "mask": [9, 1]}},
    {"id": 11, "type": "DragFusionKVConsistency", "pos": [1450, 400], "widgets": {"enabled": True, "strength": 1.0},
     "links": {"model": [2, 0], "capture": [7, 1]}},
] + _attentiondrag_tail(12, 1800, [11, 0], [10, 0], {"points": [3, 1], "mask": [8, 0]}, "attention_drag") + [
    {"id": 17, "type": "MaskToImage", "pos": [1100, 700], "links": {"mask": [8, 1]}},
    {"id": 18, "type": "PreviewImage", "pos": [1450, 700], "title": "the automatic mask alone (AutoMask, Eq. 11-12)",
     "links": {"images": [17, 0]}},
]

ATTENTION_DRAG_INPAINT = _attentiondrag_front() + [
    {"id": 8, "type": "DragFusionAttentionInterpolate", "pos": [1100, 100],
     "widgets": {"fill": "attention", "mode": "inpaint", "steps": "all"},
     "links": {"capture": [7, 1], "latent": [7, 0], "mask": [3, 2]}},
    {"id": 9, "type": "DragFusionKVConsistency", "pos": [1100, 400], "widgets": {"enabled": True, "strength": 1.0},
     "links": {"model": [2, 0], "capture": [7, 1]}},
] + _attentiondrag_tail(10, 1450, [9, 0], [8, 0], {"mask": [3, 2]}, "attention_drag_inpaint")

SPECS["attention_drag.json"] = (ATTENTION_DRAG, [
    "AttentionDrag (one-step drag editing from the UNet's own self-attention). Paper defaults: an LCM model "
    "(ModelSamplingDiscrete 'lcm' on an LCM-distilled UNet: the node 'LCM-LoRA for SD1.5' is bypassed so the workflow runs "
    "without the file; with your SD1.5 checkpoint put SD1.5's LCM-LoRA, lcm-lora-sdv1-5.safetensors, in models/loras and "
    "press Ctrl+B on it -- without it plain SD1.5 runs on the LCM timestep grid, which is not what the paper does), 10 steps, "
    "inversion to step 5, cfg 1. Defaults measured on ShapeDrag-GT, the paper's settings one widget away: Inversion "
    "with Attention Capture records q/k/v; AutoMask (Eq. 11-12) reference 'mean', tau 4 (the paper's literal 'handle' "
    "reference was empty on all 12 drag scenes); the sample's own editable region is united with it (the automatic "
    "mask alone: MD 6.3-13.6 px, united 2.8-5.0; disconnect it for the fully automatic mask; the preview below AutoMask shows the automatic mask alone on every run); Semantic Move (Eq. 5-9) "
    "movement 'rigid' (the paper's Eq. 6: MD 18-26 px, the object left behind); Attention Interpolate (Eq. 13); then "
    "KSamplerAdvanced resumes at step 5 (add_noise disable, euler = DDIM, same steps and scheduler) on the model "
    "patched for KV consistency (each step reads the keys/values the inversion saved at that sigma). "
    "The saved image shows original | arrows | mask | result."])
SPECS["attention_drag_inpaint.json"] = (ATTENTION_DRAG_INPAINT, [
    "AttentionDrag inpainting: no drag pairs, only a mask. The mask cells are blanks, filled from the cells they "
    "attend to (Attention Interpolate, mode 'inpaint', Eq. 13 renormalised), then regenerated from step 5 of 10 "
    "with KSamplerAdvanced on the model patched for KV consistency (on ShapeDrag-GT, PSNR inside the hole 22.43 dB "
    "with it against 21.75 without, and no removed object came back; switch it off if yours does). The saved image "
    "shows original | original | mask | result."])

# Drag Points canvas (issue 9): image + points + mask from the canvas widget -> arrow preview.
# dragfusion_sample.png is DragBench's JH_2023-09-14-1820-16 image (the browser tests upload it, with its
# mask as dragfusion_masks/dragfusion_sample_mask.png); with another image, place the points again.
DRAG_POINTS_CANVAS = [
    {"id": 1, "type": "DragFusionDragPoints", "pos": [50, 100], "size": [400, 520],
     "widgets": {"image": "dragfusion_sample.png",
                 "points": '{"version": 1, "width": 512, "height": 512, '
                           '"pairs": [{"handle": [331, 179], "target": [217, 177]}]}',
                 "mask": "dragfusion_masks/dragfusion_sample_mask.png"}},
    {"id": 2, "type": "DragFusionPreviewDragPoints", "pos": [500, 100],
     "links": {"image": [1, 0], "points": [1, 1], "mask": [1, 2]}},
]
SPECS["drag_points_canvas.json"] = (DRAG_POINTS_CANVAS, [
    "Drag Points: pick or upload an image, click a handle then its target (numbered arrows; drag a point to "
    "move it; right-click or Delete on a hovered pair removes it), paint the editable region in Mask mode. "
    "Coordinates are image pixels; the mask is stored as a PNG in the input folder (dragfusion_masks/). "
    "This example expects dragfusion_sample.png in the input folder (any image works: choose yours and place "
    "the points again)."])

# The first-minute workflow: your own photo on the Drag Points canvas drives the full AttentionDrag edit.
CANVAS_PHOTO = 19  # core LoadImage of the canvas's photo: the inversion's input, with no points among its ancestors


def _canvas_source(spec: list) -> list:
    """AttentionDrag with node 3 = the Drag Points canvas (image, points, mask) and a typed prompt. VAE Encode
    reads the photo from node 19, a core Load Image of the same file (the canvas keeps it on its own image),
    not from the canvas: ComfyUI keys its cache on a node's inputs and all its ancestors', so a link from the
    canvas would re-run the encode and the inversion on every point edit; this way a point edit re-runs only
    AutoMask onwards (bench/live_reedit.py)."""
    out = []
    for n in spec:
        n = {**n, "links": dict(n.get("links", {}))}
        if n["id"] == 3:
            n = {**DRAG_POINTS_CANVAS[0], "id": 3, "pos": [50, 450]}
        elif n["id"] == 4:
            n["links"].pop("text")
            n["widgets"] = {"text": "a photo"}
            n["title"] = "prompt (what the photo shows)"
        elif n["id"] == 6:
            n["links"]["pixels"] = [CANVAS_PHOTO, 0]
        out.append(n)
    out.append({"id": CANVAS_PHOTO, "type": "LoadImage", "pos": [50, 1150], "size": [320, 120],
                "title": "photo to invert (follows Drag Points' image)",
                "widgets": {"image": DRAG_POINTS_CANVAS[0]["widgets"]["image"]}})
    return out


SPECS["attention_drag_canvas.json"] = (_canvas_source(ATTENTION_DRAG), [
    "AttentionDrag on your own photo: in Drag Points, choose or upload the photo, click a handle then its target "
    "(as many pairs as you like), paint the region that may change (optional, an override: the automatic mask is united "
    "with it, and the preview below AutoMask shows the automatic mask alone; paint nothing to edit with the automatic mask only), type what the photo shows in the prompt, pick your SD1.5-family checkpoint, Queue. The rest is the "
    "attention_drag example: LCM schedule, 10 steps, edit at step 5, no CFG. The saved image shows "
    "original | arrows | mask | result. 'photo to invert' loads the same photo for the inversion and follows the "
    "canvas's image by itself: it keeps the points out of the inversion's inputs, so that a point edit (or the "
    "canvas's Live switch) re-runs only AutoMask onwards and the inversion comes from ComfyUI's cache."])

# PNI (issue 6): invert a real photo with its own prompt, edit it with a target prompt through the PNI Guider.
PNI_EDIT = [
    {"id": 1, "type": "CheckpointLoaderSimple", "pos": [50, 100],
     "widgets": {"ckpt_name": "dragfusion_tiny_sd15.safetensors"}},
    {"id": 2, "type": "DragFusionLoadDragBenchSample", "pos": [50, 300],
     "widgets": {"sample": SAMPLE, "size": "fit 512 (multiple of 8)"}},
    {"id": 3, "type": "VAEEncode", "pos": [450, 300], "links": {"pixels": [2, 0], "vae": [1, 2]}},
    {"id": 4, "type": "CLIPTextEncode", "pos": [450, 450], "title": "source prompt (the sample's own)",
     "widgets": {"text": ""}, "links": {"clip": [1, 1], "text": [2, 3]}},
    {"id": 5, "type": "CLIPTextEncode", "pos": [450, 650], "title": "target prompt",
     "widgets": {"text": "a photo of a cat"}, "links": {"clip": [1, 1]}},
    {"id": 6, "type": "DragFusionPNIInvert", "pos": [850, 100], "widgets": {"steps": 20, "guidance_until": 20},
     "links": {"model": [1, 0], "latent": [3, 0], "source": [4, 0]}},
    {"id": 7, "type": "DragFusionPNIGuider", "pos": [1250, 100],
     "links": {"model": [1, 0], "inversion": [6, 0], "target": [5, 0]}},
    {"id": 8, "type": "DisableNoise", "pos": [1250, 300]},
    {"id": 9, "type": "KSamplerSelect", "pos": [1250, 400], "widgets": {"sampler_name": "ddim"}},
    {"id": 10, "type": "SamplerCustomAdvanced", "pos": [1650, 100],
     "links": {"noise": [8, 0], "guider": [7, 0], "sampler": [9, 0], "sigmas": [6, 2], "latent_image": [6, 1]}},
    {"id": 11, "type": "VAEDecode", "pos": [2050, 100], "links": {"samples": [10, 0], "vae": [1, 2]}},
    {"id": 12, "type": "SaveImage", "pos": [2350, 100], "widgets": {"filename_prefix": "dragfusion_pni_edit"},
     "links": {"images": [11, 0]}},
]
SPECS["pni_edit.json"] = (PNI_EDIT, [
    "Proximal Negative-Prompt Inversion (VersaFusion Algorithm 1): PNI Invert DDIM-inverts the photo with its own "
    "prompt (20 steps here, ddim_uniform; the paper uses 50); PNI Guider samples it back with the target prompt, "
    "the source prompt as the negative, the CFG difference through prox_lambda (L1/L0; lambda fixed or, with "
    "lambda_mode quantile, adapted each step) and the unedited region pulled towards the inversion (eta) on the "
    "last guidance_until steps, the low-noise end (here all 20). Sample with DisableNoise, ddim (or euler) and PNI "
    "Invert's own sigmas and z_T. With target = source it reconstructs the photo. Use an SD1.5-family checkpoint."])

# Dual-branch (issue 8): PNI Invert the photo, then the Dual-Branch Guided Sampler edits it (every task of the node).
REF = 10  # the reference tasks' second sample: node 10 (image 0, points 1, mask 2, prompt 3), inverted by node 13


def _dual_branch(task: str, widgets: dict, links: dict, prefix: str, side_by_side: bool = True, sample: str = SAMPLE,
                 reference: str | None = None, side_mask: tuple | None = (2, 2)) -> list:
    """Nodes 1-9: checkpoint, ``sample`` (node 2), its PNI Invert (node 5), the Dual-Branch Guided Sampler (node 6),
    VAE Decode, side-by-side (its mask panel from output ``side_mask``, default the sample's mask; None: none) and
    SaveImage. With ``reference`` (a second sample folder): nodes 10-14 load it, PNI Invert it at the same size and
    steps into the sampler's ``reference`` input, and preview it."""
    spec = [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [50, 100],
         "widgets": {"ckpt_name": "dragfusion_tiny_sd15.safetensors"}},
        {"id": 2, "type": "DragFusionLoadDragBenchSample", "pos": [50, 300],
         "widgets": {"sample": sample, "size": "fit 512 (multiple of 8)"}},
        {"id": 3, "type": "VAEEncode", "pos": [450, 300], "links": {"pixels": [2, 0], "vae": [1, 2]}},
        {"id": 4, "type": "CLIPTextEncode", "pos": [450, 450], "title": "source prompt (the sample's own)",
         "widgets": {"text": ""}, "links": {"clip": [1, 1], "text": [2, 3]}},
        {"id": 5, "type": "DragFusionPNIInvert", "pos": [850, 100], "widgets": {"steps": 20, "guidance_until": 20},
         "links": {"model": [1, 0], "latent": [3, 0], "source": [4, 0]}},
        {"id": 6, "type": "DragFusionDualBranchGuidedSampler", "pos": [1250, 100],
         "widgets": {"task": task, "sampler_name": "euler", **widgets},
         "links": {"model": [1, 0], "inversion": [5, 0], "target": [4, 0], **links}},
        {"id": 7, "type": "VAEDecode", "pos": [1650, 100], "links": {"samples": [6, 0], "vae": [1, 2]}},
    ]
    if side_by_side:
        spec += [{"id": 8, "type": "DragFusionSideBySide", "pos": [1950, 100],
                  "links": {"original": [2, 0], "result": [7, 0], **({"points": [2, 1]} if "points" in links else {}),
                            **({"mask": list(side_mask)} if side_mask else {})}},
                 {"id": 9, "type": "SaveImage", "pos": [2300, 100], "widgets": {"filename_prefix": prefix},
                  "links": {"images": [8, 0]}}]
    else:
        spec += [{"id": 8, "type": "SaveImage", "pos": [1950, 100], "widgets": {"filename_prefix": prefix},
                  "links": {"images": [7, 0]}}]
    if reference:
        spec[5]["links"]["reference"] = [REF + 3, 0]
        spec += [
            {"id": REF, "type": "DragFusionLoadDragBenchSample", "pos": [50, 750], "title": "reference sample",
             "widgets": {"sample": reference, "size": "fit 512 (multiple of 8)"}},
            {"id": REF + 1, "type": "VAEEncode", "pos": [450, 750], "links": {"pixels": [REF, 0], "vae": [1, 2]}},
            {"id": REF + 2, "type": "CLIPTextEncode", "pos": [450, 900],
             "title": "reference prompt (the reference sample's own)",
             "widgets": {"text": ""}, "links": {"clip": [1, 1], "text": [REF, 3]}},
            {"id": REF + 3, "type": "DragFusionPNIInvert", "pos": [850, 600], "title": "PNI Invert (reference)",
             "widgets": {"steps": 20, "guidance_until": 20},
             "links": {"model": [1, 0], "latent": [REF + 1, 0], "source": [REF + 2, 0]}},
            {"id": REF + 4, "type": "PreviewImage", "pos": [1950, 500], "title": "the reference",
             "links": {"images": [REF, 0]}},
        ]
    return spec


DUAL_BRANCH_NOTE = (" PNI Invert (20 steps here, ddim_uniform; the paper uses 50) inverts the photo with its own prompt; "
                    "the Dual-Branch Guided Sampler runs the guidance branch (its reconstruction) and the generation "
                    "branch in one batch per step, with KV replacement and the energy of Eq. 6 (w_edit, w_share, "
                    "alpha 1, beta 4) guiding the early steps (the first guidance_fraction of them; the energy and KV settings "
                    "are the node's defaults). Use an SD1.5-family checkpoint.")
SPECS["dual_branch_drag.json"] = (_dual_branch("drag", {}, {"points": [2, 1], "mask": [2, 2]}, "dragfusion_dual_branch_drag"), [
    "VersaFusion dual-branch drag: the DragBench sample's handle -> target pairs and its editable region (mask)."
    + DUAL_BRANCH_NOTE + " The saved image shows original | arrows | mask | result."])
SPECS["dual_branch_move.json"] = (_dual_branch("move", {"offset_x": -64.0, "offset_y": 0.0, "scale": 1.0},
                                               {"mask": [2, 2]}, "dragfusion_dual_branch_move"), [
    "VersaFusion dual-branch move / resize: the masked region (here the sample's editable mask) moves by "
    "(offset_x, offset_y) pixels and is scaled by 'scale' about its box centre." + DUAL_BRANCH_NOTE])
SPECS["dual_branch_outpaint.json"] = (_dual_branch("outpaint", {"pad_left": 64, "pad_right": 64},
                                                   {}, "dragfusion_dual_branch_outpaint", side_by_side=False), [
    "VersaFusion dual-branch outpaint: the canvas grows by the four pads (pixels, multiples of 8); the old canvas "
    "is preserved through the energy's shared term and KV replacement, the new area is drawn to match it." + DUAL_BRANCH_NOTE])


# [sdxl]: the same nodes on SDXL and SD2.x (the family is read from the model). One example per architecture:
# AttentionDrag on SDXL (1024 px, SDXL's own prompt encoder with its size conditioning, SDXL's LCM-LoRA bypassed),
# the dual-branch drag on SD2.x-768 (768 px; ComfyUI reads v-prediction from the real checkpoint).
SDXL_LORA_FILE = "lcm-lora-sdxl.safetensors"


def _for_family(spec: list, ckpt: str, size: str) -> list:
    """A copy of ``spec`` on another family's checkpoint (the set-up's tiny one: pick yours) and sample size."""
    out = json.loads(json.dumps(spec))
    for n in out:
        if n["type"] == "CheckpointLoaderSimple":
            n["widgets"]["ckpt_name"] = ckpt
        elif n["type"] == "DragFusionLoadDragBenchSample":
            n["widgets"]["size"] = size
    return out


def _for_sdxl(spec: list) -> list:
    """An AttentionDrag spec on the tiny SDXL checkpoint, SDXL's LCM-LoRA, the sample at 1024 px and
    CLIPTextEncodeSDXL (pooled output + size / crop conditioning) for the prompt."""
    out = _for_family(spec, "dragfusion_tiny_sdxl.safetensors", "fit 1024 (multiple of 8)")
    for n in out:
        if n["id"] == LCM_LORA_NODE:
            n["widgets"]["lora_name"] = SDXL_LORA_FILE
            n["title"] = "LCM-LoRA for SDXL (bypassed; Ctrl+B to use it)"
        elif n["type"] == "CLIPTextEncode":
            n["type"] = "CLIPTextEncodeSDXL"
            n["widgets"] = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024,
                            "target_height": 1024}
            n["links"] = {"clip": n["links"]["clip"], "text_g": n["links"]["text"], "text_l": n["links"]["text"]}
    return out


SPECS["attention_drag_sdxl.json"] = (_for_sdxl(ATTENTION_DRAG), [
    "AttentionDrag on SDXL: the attention_drag example with an SDXL-family checkpoint (SDXL, SSD-1B, Vega, KOALA or a "
    "fine-tune; the pack reads the family from the model). SDXL has no self-attention on the latent grid: the capture "
    "preset 'auto' records the decoder's layers on the finest attention grid, latent / 2 (15.7 MB per step at "
    "1024x1024), and the edit mask and movement are computed on the latent grid from their rows. The prompt goes "
    "through CLIPTextEncodeSDXL (pooled output and size conditioning). For the LCM schedule put SDXL's LCM-LoRA, "
    "lcm-lora-sdxl.safetensors, in models/loras and un-bypass its node (Ctrl+B). The sample is scaled to 1024 px."])
DUAL_BRANCH_DRAG_SD2 = _for_family(_dual_branch("drag", {}, {"points": [2, 1], "mask": [2, 2]}, "dragfusion_dual_branch_drag_sd2"),
                                   "dragfusion_tiny_sd2.safetensors", "fit 768 (multiple of 8)")
SPECS["dual_branch_drag_sd2.json"] = (DUAL_BRANCH_DRAG_SD2, [
    "VersaFusion dual-branch drag on SD2.x: the dual_branch_drag example with an SD2.x checkpoint (SD2.1-768 "
    "v-prediction or SD2.x-512 epsilon; ComfyUI reads which from the file, and the pack's DDIM inversion and guidance "
    "work on ComfyUI's denoised prediction, so both run unchanged). The sample is scaled to 768 px."
    + DUAL_BRANCH_NOTE.replace(" Use an SD1.5-family checkpoint.", "")])


# The other dual-branch tasks (issue 19.7): resize, appearance, paste, style, face landmarks. Drag100 samples (data/drag100,
# Apache-2.0, 512x512 like the corgi, so image and reference load at the same size): cat_8 (a kitten, mask = its head),
# nature_4 (a snowy field) and car_0 (a car, mask = the car), art_0 (a Van Gogh wheat field), face_0 (a man's face).
APPEARANCE_REF = "dragfusion_data/drag100/cat_8"
PASTE_IMAGE = "dragfusion_data/drag100/nature_4"
PASTE_REF = "dragfusion_data/drag100/car_0"
STYLE_REF = "dragfusion_data/drag100/art_0"
FACE_SAMPLE = "dragfusion_data/drag100/face_0"

# 68 landmarks on face_0 at 512x512, iBUG-68 order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59,
# inner lips 60-67). Not a detector's output: a 68-point template placed by hand on the photo's visible features (eye
# corners and lids, brows, nose bridge, tip and nostrils, lip corners and outlines, the jaw from ear to chin along
# the beard), checked on an overlay; good to a few pixels.
FACE_SOURCE = [
    [188, 185], [190, 210], [194, 235], [200, 260], [210, 283], [224, 303], [243, 320], [270, 332], [300, 337],
    [322, 330], [336, 315], [345, 297], [350, 277], [353, 255], [355, 232], [356, 208], [357, 186],
    [226, 164], [239, 157], [255, 154], [270, 154], [285, 157], [317, 155], [327, 152], [339, 152], [349, 155], [356, 162],
    [302, 178], [306, 189], [310, 201], [315, 212], [290, 224], [299, 225], [310, 227], [319, 225], [327, 222],
    [225, 183], [243, 174], [262, 171], [277, 180], [262, 187], [243, 186],
    [320, 180], [329, 175], [343, 174], [352, 183], [345, 189], [330, 188],
    [265, 266], [278, 259], [293, 254], [307, 254], [320, 254], [331, 256], [339, 262], [333, 270], [321, 276],
    [306, 279], [292, 277], [278, 272],
    [270, 266], [290, 265], [306, 266], [323, 264], [335, 262], [323, 266], [306, 268], [290, 268],
]
# The expression change: the mouth corners (outer 48 / 54, inner 60 / 64) 8 px up and 4 px out, the lip points next to
# them half as far (a slight smile); every other landmark stays.
SMILE = {48: (-4, -8), 60: (-4, -8), 54: (4, -8), 64: (4, -8),
         49: (-2, -4), 59: (-2, -4), 61: (-2, -4), 67: (-2, -4), 53: (2, -4), 55: (2, -4), 63: (2, -4), 65: (2, -4)}
FACE_TARGET = [[x + SMILE.get(i, (0, 0))[0], y + SMILE.get(i, (0, 0))[1]] for i, (x, y) in enumerate(FACE_SOURCE)]


def landmarks_json(source: list, target: list, width: int = 512, height: int = 512) -> str:
    """The Dual-Branch Guided Sampler's landmarks_json: image pixels, width / height those of the loaded image."""
    row = lambda pts: ", ".join(f"[{x:g}, {y:g}]" for x, y in pts)  # noqa: E731
    return f'{{"width": {width}, "height": {height},\n "source": [{row(source)}],\n "target": [{row(target)}]}}'


def landmarks_at_fit(text: str, side: int) -> str:
    """A landmarks_json for the same photo loaded at 'fit <side>' (Load DragBench Sample's sizes; the CI sweeps load
    the examples' samples at 128 px): width / height and every point scaled as the loader scales the image."""
    data = json.loads(text)
    w, h = data["width"], data["height"]
    s = side / max(w, h)
    nw, nh = max(8, int(round(w * s / 8)) * 8), max(8, int(round(h * s / 8)) * 8)
    fit = lambda pts: [[min(x * nw / w, nw - 1), min(y * nh / h, nh - 1)] for x, y in pts]  # noqa: E731
    return json.dumps({"width": nw, "height": nh, "source": fit(data["source"]), "target": fit(data["target"])})


REFERENCE_NOTE = (" The reference is a second photo with its own PNI Invert at the same size and steps (the sampler "
                  "refuses another size or schedule); 'the reference' previews it.")
SPECS["dual_branch_resize.json"] = (_dual_branch("move", {"offset_x": 0.0, "offset_y": 0.0, "scale": 1.3},
                                                 {"mask": [2, 2]}, "dragfusion_dual_branch_resize"), [
    "VersaFusion dual-branch resize (the node's task 'move' with a scale, 'move / resize' in its docs): the object "
    "under the mask (here the corgi's head, the DragBench sample's editable mask) grows by scale 1.3 about its box "
    "centre and stays in place (offset 0, 0); scale below 1 shrinks it, offset_x / offset_y move it as well. Your own "
    "photo: load it with Drag Points (paint the object in Mask mode) or Load Image, connect the image to VAE Encode and "
    "the object's MASK to 'mask', and type its prompt." + DUAL_BRANCH_NOTE
    + " The saved image shows original | original | mask | result."])
SPECS["dual_branch_appearance.json"] = (_dual_branch("appearance", {}, {"mask": [2, 2], "reference_mask": [REF, 2]},
                                                     "dragfusion_dual_branch_appearance", reference=APPEARANCE_REF), [
    "VersaFusion dual-branch appearance replacement (the node's task 'appearance'): the object under the image's mask "
    "(the corgi's head) takes the look of the reference object under reference_mask (the kitten's head of Drag100 "
    "cat_8, its mask); the object's shape and the rest of the photo stay. Your own photos: the image and its object "
    "MASK in the top chain ('mask'), the reference photo and its object MASK in the 'reference sample' chain "
    "('reference_mask'), e.g. two Drag Points nodes (Mask mode) or Load Image nodes; both photos at the same size."
    + REFERENCE_NOTE + DUAL_BRANCH_NOTE + " The saved image shows original | original | mask | result."])
SPECS["dual_branch_paste.json"] = (_dual_branch("paste", {"offset_x": -64.0, "offset_y": 40.0, "scale": 0.6},
                                                {"reference_mask": [REF, 2]}, "dragfusion_dual_branch_paste",
                                                sample=PASTE_IMAGE, reference=PASTE_REF, side_mask=(REF, 2)), [
    "VersaFusion dual-branch paste (the node's task 'paste'): the reference object under reference_mask (the car of "
    "Drag100 car_0, its mask) is placed into the image (the snowy field of Drag100 nature_4), scaled by 'scale' (0.6) "
    "about its box centre and moved by offset_x, offset_y (-64, 40 pixels) from where it sits in the reference; the "
    "rest of the image is kept. Your own photos: the image in the top chain, the photo with the object and the "
    "object's MASK in the 'reference sample' chain ('reference_mask'), e.g. Drag Points (Mask mode) or Load Image; "
    "both photos at the same size." + REFERENCE_NOTE + DUAL_BRANCH_NOTE
    + " The saved image shows original | original | the reference object's mask (where it sits in the reference) | result."])
SPECS["dual_branch_style.json"] = (_dual_branch("style", {}, {}, "dragfusion_dual_branch_style", reference=STYLE_REF,
                                                side_mask=None), [
    "VersaFusion dual-branch style transfer (the node's task 'style'): the image (the corgi) takes the style of the "
    "whole reference image (Drag100 art_0, a Van Gogh wheat field: its feature statistics), while its layout stays "
    "its own; w_edit (style) and w_share (layout) trade the two. No masks. Your own photos: the photo in the top "
    "chain, the style image in the 'reference sample' chain (Load Image or Drag Points), both at the same size."
    + REFERENCE_NOTE + DUAL_BRANCH_NOTE + " The saved image shows original | original | (no mask) | result."])
SPECS["dual_branch_face.json"] = (_dual_branch("landmarks", {"landmarks_json": landmarks_json(FACE_SOURCE, FACE_TARGET)},
                                               {}, "dragfusion_dual_branch_face", sample=FACE_SAMPLE, side_mask=None), [
    "VersaFusion dual-branch face editing (the node's task 'landmarks'): landmarks_json holds 68 face landmarks (the "
    "iBUG 68-point layout) twice, source and target; each landmark that moves is dragged from its source to its "
    "target, the face area around them may change, the rest of the photo is kept. Here the mouth corners go 8 px up "
    "and 4 px out, their neighbours half as far (a slight smile), on Drag100 face_0. The source points are not "
    "detected: they are a 68-point template fitted by hand to this photo at 512x512, good to a few pixels. With a "
    "face-landmark detector node, feed real ones: landmarks_json is {\"width\": W, \"height\": H, \"source\": "
    "[[x, y] x 68], \"target\": [[x, y] x 68]} in pixels of the loaded image (W x H must be its size), or leave it "
    "empty and connect 68 handle -> target pairs (Drag Points) to 'points'. Your own photo needs its own landmarks."
    + DUAL_BRANCH_NOTE + " The saved image shows original | original | (no mask) | result."])
