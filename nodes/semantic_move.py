"""SemanticMove: move latent cells along the drag, weighted by the handles' attention (Eq. 5-9)."""
from comfy_api.latest import io

from ..guidance import automask, movement
from ..guidance.errors import input_error
from . import _attentiondrag as ad
from .types import CATEGORY_ATTENTIONDRAG, AttnCaptureType, DragPointsType
from ..attention_patch import comfy_host as host

NODE = "AttentionDrag Semantic Move"
MOVEMENTS = ("attention ratio (Eq. 6)", "rigid")
# measured on ShapeDrag-GT (bench/shapedrag/ad_sweep.py, seed 0, 4 scenes per task, same masks): MD 2.83 / 4.06 /
# 4.90 px (drag / 3 pairs / two objects) for rigid against 18.25 / 20.81 / 26.07 for Eq. 6
DEFAULT_MOVEMENT = "rigid"


class SemanticMove(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionSemanticMove",
            display_name=NODE,
            category=CATEGORY_ATTENTIONDRAG,
            description=(
                "Semantic-based element movement (AttentionDrag Sec. 3.2). Drag vector V = target - handle in "
                "latent cells (Eq. 5). Default movement 'rigid': every mask cell moves by V. With the paper's "
                "'attention ratio (Eq. 6)': at every chosen captured step a cell moves by A[cell] / A[handle] * V, "
                "A being the handle's attention row (Eq. 6); these are averaged over the steps (Eq. 7) and set "
                "to zero outside the mask (Eq. 8). Several pairs: each cell's movement is the sum of the "
                "per-pair vectors weighted by the cell's share of the handles' step-averaged attention "
                "(normalised across handles). Eq. 9 is a forward warp: each cell's content is written to its "
                "rounded destination (round half up); writes off the grid are dropped; cells outside the mask "
                "write to themselves. Collisions keep the source most attended by the handles (the largest "
                "handle attention; ties: the lower cell index). Blanks = mask cells nothing was written to; "
                "they keep their old value in the output LATENT until AttentionInterpolate fills them. "
                "The input LATENT is the one of 'Inversion with Attention Capture' (the edit step); the output "
                "carries no noise_mask. An empty mask is an error (Eq. 12 with reference 'handle' is often "
                "empty: use reference 'mean' or a lower tau). " + ad.REGENERATE_DOC),
            inputs=[
                AttnCaptureType.Input("capture", tooltip="ATTN_CAPTURE from 'Inversion with Attention Capture'."),
                io.Latent.Input("latent", tooltip="The LATENT at the edit step, from the same 'Inversion with Attention Capture'."),
                DragPointsType.Input("points", tooltip="Handle -> target pairs on the captured image; targets must lie inside it."),
                io.Mask.Input("mask", tooltip="Where cells may move (Eq. 8): AutoMask's output or your own, image or latent size."),
                io.String.Input("steps", default="all",
                                tooltip="Captured inversion steps whose movements are averaged (Eq. 7): 'all' or e.g. '0, 2, 4'."),
                io.Combo.Input("movement_mode", display_name="movement", options=list(MOVEMENTS), default=DEFAULT_MOVEMENT,
                               optional=True,
                               tooltip="'rigid' (default): every mask cell moves by the whole drag (several pairs: "
                                       "weighted by the cell's attention to each handle). 'attention ratio (Eq. 6)': a "
                                       "cell moves by A[cell] / A[handle] of the drag, the paper's rule; where the "
                                       "self-attention is local it stretches the object and leaves most of it behind "
                                       "(ShapeDrag-GT: MD 18.3 px against 2.8 for rigid on a 24 px drag)."),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.Mask.Output(display_name="blank_mask")],
        )

    @classmethod
    def execute(cls, capture, latent, points, mask, steps="all", movement_mode=DEFAULT_MOVEMENT):
        capture = ad.check_capture(capture, NODE)
        z = ad.check_latent(latent, capture, NODE)
        pairs = ad.check_points(points, capture, NODE)
        step_list = ad.parse_steps(steps, capture, NODE)
        if movement_mode not in MOVEMENTS:
            raise input_error(NODE, "movement", f"{movement_mode!r} is not one of {list(MOVEMENTS)}")
        b = z.shape[0]
        cells = ad.match_batch(ad.mask_to_cells(mask, capture, NODE, "mask"), b, NODE, "mask")
        if not cells.any(dim=1).all():
            raise input_error(NODE, "mask", "the mask is empty, so nothing can move. AutoMask with reference 'handle' "
                                            "(the paper's literal Eq. 12) is empty when the handle attends most to itself; "
                                            "use reference 'mean', a lower tau, or a mask of your own")
        h, w = capture.latent_hw
        handles = automask.handle_cells(pairs, h, w)
        host.throw_if_interrupted()
        rows = ad.rows_fn(capture, step_list, b, reduce_steps=False)(handles).to(z.device)  # [S, B, P, N]
        moved, blank, _ = movement.semantic_move(z, rows, handles, movement.drag_vectors(pairs), cells.to(z.device),
                                                rigid=movement_mode == "rigid")
        return io.NodeOutput(ad.output_latent(latent, moved), ad.cells_to_mask(blank.cpu(), capture))


NODES = [SemanticMove]
