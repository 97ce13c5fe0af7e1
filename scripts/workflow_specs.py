"""The example workflows, written once as small specs (see scripts/workflows.py).

Each entry: file name -> (nodes, notes). Node: {"id", "type", "pos", "widgets", "links"}.
"""

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
         "widgets": {"steps": 10, "edit_step": 5, "scheduler": "simple", "cfg": 1.0, "layers": "latent resolution",
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
def _canvas_source(spec: list) -> list:
    """AttentionDrag with node 3 = the Drag Points canvas (image, points, mask) and a typed prompt."""
    out = []
    for n in spec:
        n = {**n, "links": dict(n.get("links", {}))}
        if n["id"] == 3:
            n = {**DRAG_POINTS_CANVAS[0], "id": 3, "pos": [50, 450]}
        elif n["id"] == 4:
            n["links"].pop("text")
            n["widgets"] = {"text": "a photo"}
            n["title"] = "prompt (what the photo shows)"
        out.append(n)
    return out


SPECS["attention_drag_canvas.json"] = (_canvas_source(ATTENTION_DRAG), [
    "AttentionDrag on your own photo: in Drag Points, choose or upload the photo, click a handle then its target "
    "(as many pairs as you like), paint the region that may change (optional, an override: the automatic mask is united "
    "with it, and the preview below AutoMask shows the automatic mask alone; paint nothing to edit with the automatic mask only), type what the photo shows in the prompt, pick your SD1.5-family checkpoint, Queue. The rest is the "
    "attention_drag example: LCM schedule, 10 steps, edit at step 5, no CFG. The saved image shows "
    "original | arrows | mask | result."])

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

# Dual-branch (issue 8): PNI Invert the photo, then the Dual-Branch Guided Sampler edits it (drag / move / outpaint).
def _dual_branch(task: str, widgets: dict, links: dict, prefix: str, side_by_side: bool = True) -> list:
    spec = [
        {"id": 1, "type": "CheckpointLoaderSimple", "pos": [50, 100],
         "widgets": {"ckpt_name": "dragfusion_tiny_sd15.safetensors"}},
        {"id": 2, "type": "DragFusionLoadDragBenchSample", "pos": [50, 300],
         "widgets": {"sample": SAMPLE, "size": "fit 512 (multiple of 8)"}},
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
                            "mask": [2, 2]}},
                 {"id": 9, "type": "SaveImage", "pos": [2300, 100], "widgets": {"filename_prefix": prefix},
                  "links": {"images": [8, 0]}}]
    else:
        spec += [{"id": 8, "type": "SaveImage", "pos": [1950, 100], "widgets": {"filename_prefix": prefix},
                  "links": {"images": [7, 0]}}]
    return spec


DUAL_BRANCH_NOTE = (" PNI Invert (20 steps here, ddim_uniform; the paper uses 50) inverts the photo with its own prompt; "
                    "the Dual-Branch Guided Sampler runs the guidance branch (its reconstruction) and the generation "
                    "branch in one batch per step, with KV replacement and the energy of Eq. 6 (w_edit, w_share, "
                    "alpha 1, beta 4) guiding the first 60 % of the steps. Use an SD1.5-family checkpoint.")
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
