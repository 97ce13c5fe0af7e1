"""AutoMask: the editable region from the handles' self-attention (AttentionDrag Eq. 11-12)."""
from comfy_api.latest import io

from ..guidance import automask
from ..guidance.errors import input_error
from . import _attentiondrag as ad
from .types import CATEGORY_ATTENTIONDRAG, AttnCaptureType, DragPointsType

NODE = "AttentionDrag AutoMask"
MASK_MODES = ("intersect", "replace", "union")


class AutoMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionAutoMask",
            display_name=NODE,
            category=CATEGORY_ATTENTIONDRAG,
            description=(
                "Automatic mask generation (AttentionDrag Sec. 3.3). For each handle, its self-attention rows "
                "(head- and layer-averaged) are averaged over the chosen captured inversion steps (Eq. 11) and "
                "a cell is editable when its attention divided by a reference exceeds tau (Eq. 12). "
                "Reference 'mean' (default) compares with the uniform level 1/N. Reference 'handle' is the "
                "paper's literal Eq. 12 (the handle's attention to itself); it is empty whenever the handle "
                "attends most to itself (on ShapeDrag-GT: on every one of 12 drag scenes). Several handles: the union of their masks. "
                "Optional square dilation in latent cells, then an optional user mask intersects with, "
                "replaces or is united with the automatic one. Outputs: the MASK to edit and the automatic mask "
                "alone (before the user mask), both at image size (8x the latent), each latent cell an 8x8 block."),
            inputs=[
                AttnCaptureType.Input("capture", tooltip="ATTN_CAPTURE from 'Inversion with Attention Capture'."),
                DragPointsType.Input("points", tooltip="Handle -> target pairs placed on the captured image (its exact size)."),
                io.Float.Input("tau", default=4.0, min=0.0, max=1000.0, step=0.05,
                               tooltip="Threshold of Eq. 12: a cell is in the mask when attention / reference > tau. Default 4.0 "
                                       "(with reference 'mean': IoU 0.70 with the dragged object on ShapeDrag-GT against 0.62 "
                                       "at 2.0); the paper's 2.0 is for reference 'handle'."),
                io.Combo.Input("reference", options=list(automask.REFERENCES), default="mean",
                               tooltip="'mean' (default): divide by the uniform attention 1/N. 'handle': divide by the "
                                       "handle's attention to itself (the paper, literally; usually empty)."),
                io.String.Input("steps", default="all",
                                tooltip="Captured inversion steps to average (Eq. 11): 'all' or a comma list such as '0, 2, 4'."),
                io.Int.Input("dilation", default=0, min=0, max=64,
                             tooltip="Grow the automatic mask by this many latent cells (8 px each); 0 = as computed."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional user mask (image or latent size) combined with the automatic one by mask_mode."),
                io.Combo.Input("mask_mode", options=list(MASK_MODES), default="intersect", optional=True,
                               tooltip="How the user mask combines with the automatic one: intersect, replace (use only the "
                                       "user mask) or union."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="The editable region: the automatic mask combined with the user mask by mask_mode."),
                     io.Mask.Output(display_name="automatic mask",
                                    tooltip="The automatic mask alone (Eq. 11-12, dilated), before any user mask: preview it "
                                            "to see what the attention found.")],
        )

    @classmethod
    def execute(cls, capture, points, tau=4.0, reference="mean", steps="all", dilation=0, mask=None,
                mask_mode="intersect"):
        capture = ad.check_capture(capture, NODE)
        pairs = ad.check_points(points, capture, NODE)
        if reference not in automask.REFERENCES:
            raise input_error(NODE, "reference", f"{reference!r} is not one of {automask.REFERENCES}")
        if mask_mode not in MASK_MODES:
            raise input_error(NODE, "mask_mode", f"{mask_mode!r} is not one of {MASK_MODES}")
        if not (0 < tau < float("inf")):
            raise input_error(NODE, "tau", f"{tau} must be > 0 (a cell is in the mask when attention / reference > tau; paper: 2.0)")
        h, w = capture.latent_hw
        b = capture.batch
        user = None
        if mask is not None:
            user = ad.mask_to_cells(mask, capture, NODE, "mask")
            b = max(b, user.shape[0])
            user = ad.match_batch(user, b, NODE, "mask")
        step_list = ad.parse_steps(steps, capture, NODE)
        handles = automask.handle_cells(pairs, h, w)
        rows = ad.rows_fn(capture, step_list, b)(handles)              # [B, P, N], Eq. 11 inside rows()
        auto = automask.auto_mask(rows.cpu(), handles, float(tau), reference)
        auto = ad.match_batch(automask.dilate(auto.reshape(-1, h, w), int(dilation)).reshape(-1, h * w), b, NODE, "capture")
        cells = auto
        if user is not None:
            cells = user if mask_mode == "replace" else (auto & user if mask_mode == "intersect" else auto | user)
        return io.NodeOutput(ad.cells_to_mask(cells, capture), ad.cells_to_mask(auto, capture))


NODES = [AutoMask]
