"""Side by Side: original | arrows | mask | result in one image, for AttentionDrag's results."""
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..guidance.errors import input_error
from . import _draw
from .types import CATEGORY_ATTENTIONDRAG, DragPointsType

NODE = "DragFusion Side by Side"


def _fit(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(image.shape[1:3]) == (h, w):
        return image
    return F.interpolate(image.movedim(-1, 1), size=(h, w), mode="bilinear", align_corners=False).movedim(1, -1)


class SideBySide(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionSideBySide",
            display_name=NODE,
            category=CATEGORY_ATTENTIONDRAG,
            description=("One image: the original | the original with the numbered handle -> target arrows | the "
                         "mask (white = editable) | the result. Every panel has the original's size; the result "
                         "and the mask are resized to it when needed, points placed on another size are scaled."),
            inputs=[
                io.Image.Input("original", tooltip="The input image."),
                io.Image.Input("result", tooltip="The edited image."),
                DragPointsType.Input("points", optional=True, tooltip="Handle -> target pairs to draw (none for inpainting)."),
                io.Mask.Input("mask", optional=True, tooltip="The edit mask (AutoMask's, or the inpainting mask)."),
            ],
            outputs=[io.Image.Output(display_name="image")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, original, result, points=None, mask=None):
        b, h, w = original.shape[0], original.shape[1], original.shape[2]
        result = _fit(result.to(original.device).float(), h, w)
        panels_all = []
        for i in range(max(b, result.shape[0])):
            orig = original[min(i, b - 1)].float()
            rgb = _draw.to_uint8(orig)
            if points is not None:
                pts = points.scaled(w, h) if (points.width, points.height) != (w, h) else points
                arrows = _draw.to_image(_draw.draw_arrows(rgb, pts.pairs)).to(orig.device)
            else:
                arrows = orig[..., :3]
            if mask is not None:
                m = mask if mask.ndim == 3 else mask[None]
                if m.ndim != 3:
                    raise input_error(NODE, "mask", f"expected a MASK [batch, height, width], got {tuple(mask.shape)}")
                m = F.interpolate(m[:, None].float(), size=(h, w), mode="nearest")[:, 0]
                mpanel = m[min(i, m.shape[0] - 1)].to(orig.device)[..., None].expand(h, w, 3)
            else:
                mpanel = torch.zeros(h, w, 3, device=orig.device)
            panels_all.append(torch.cat([orig[..., :3], arrows, mpanel, result[min(i, result.shape[0] - 1)][..., :3]], dim=1))
        out = torch.stack(panels_all).clamp(0, 1)
        return io.NodeOutput(out, ui=ui.PreviewImage(out, cls=cls))


NODES = [SideBySide]
