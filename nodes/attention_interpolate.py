"""AttentionInterpolate: fill blank latent cells from the cells they attend to (Eq. 13); inpainting."""
from comfy_api.latest import io

from ..guidance import interpolate
from ..guidance.errors import input_error
from . import _attentiondrag as ad
from .types import CATEGORY_ATTENTIONDRAG, AttnCaptureType

NODE = "AttentionDrag Interpolate"
MODES = ("drag", "inpaint")


class AttentionInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionAttentionInterpolate",
            display_name=NODE,
            category=CATEGORY_ATTENTIONDRAG,
            description=(
                "Semantic-based interpolation (AttentionDrag Sec. 3.4). Eq. 13 as printed gives every blank "
                "cell the same value; here each blank cell p uses its own attention row (head- and layer-"
                "averaged, averaged over the chosen captured steps) over the non-blank cells, renormalised: "
                "z[p] = sum_q A[p,q] z[q] / sum_q A[p,q], q not blank. Rows are computed in chunks. A cell "
                "whose row has no weight left takes the mean of the non-blank cells. fill 'nearest', 'zero' "
                "and 'noise' (Gaussian with each channel's mean and std over the non-blank cells, seeded) rerun "
                "the paper's ablation (Table 2). mode 'drag': the mask is SemanticMove's blank_mask and may be "
                "empty (then the latent passes through unchanged). mode 'inpaint' (no drag): the mask cells "
                "are the blanks, at image size a cell is blank when any of its 8x8 pixels is masked; an empty "
                "mask is an error. A mask covering every cell is an error. " + ad.REGENERATE_DOC),
            inputs=[
                AttnCaptureType.Input("capture", tooltip="ATTN_CAPTURE from 'Inversion with Attention Capture'."),
                io.Latent.Input("latent", tooltip="SemanticMove's latent (drag) or the inversion's latent at the edit step (inpaint)."),
                io.Mask.Input("mask", tooltip="The blank cells: SemanticMove's blank_mask, or the region to inpaint (image or latent size)."),
                io.Combo.Input("fill", options=list(interpolate.FILLS), default="attention",
                               tooltip="attention = Eq. 13 (renormalised); nearest / zero / noise for the paper's ablation."),
                io.Combo.Input("mode", options=list(MODES), default="drag",
                               tooltip="drag: blanks from SemanticMove, may be empty. inpaint: the mask must not be empty."),
                io.String.Input("steps", default="all",
                                tooltip="Captured inversion steps whose attention rows are averaged: 'all' or e.g. '0, 2, 4'."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, optional=True,
                             tooltip="Seed of the 'noise' fill (other fills ignore it)."),
                io.Int.Input("chunk", default=512, min=1, max=65536, optional=True,
                             tooltip="Blank cells per chunk of attention rows (memory vs. speed)."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, capture, latent, mask, fill="attention", mode="drag", steps="all", seed=0, chunk=512):
        capture = ad.check_capture(capture, NODE)
        z = ad.check_latent(latent, capture, NODE)
        if fill not in interpolate.FILLS:
            raise input_error(NODE, "fill", f"{fill!r} is not one of {interpolate.FILLS}")
        if mode not in MODES:
            raise input_error(NODE, "mode", f"{mode!r} is not one of {MODES}")
        b = z.shape[0]
        blank = ad.match_batch(ad.mask_to_cells(mask, capture, NODE, "mask"), b, NODE, "mask").to(z.device)
        if mode == "inpaint" and not blank.any(dim=1).all():
            raise input_error(NODE, "mask", "inpainting needs a mask with at least one masked pixel; the mask is empty")
        if blank.all(dim=1).any():
            raise input_error(NODE, "mask", "the mask covers the whole image, so there is nothing to interpolate from; leave some cells unmasked")
        if not blank.any():
            return io.NodeOutput(ad.output_latent(latent, z.clone()))
        step_list = ad.parse_steps(steps, capture, NODE)
        total = int(blank.any(0).sum())
        out = interpolate.fill_blanks(z, blank, fill, rows_fn=ad.rows_fn(capture, step_list, b), chunk=int(chunk),
                                      seed=int(seed), progress=ad.Progress(total))
        return io.NodeOutput(ad.output_latent(latent, out))


NODES = [AttentionInterpolate]
