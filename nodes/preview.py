"""Preview Drag Points: numbered handle -> target arrows (and a mask overlay) on the image."""
import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..guidance.errors import input_error
from . import _draw
from .types import CATEGORY_POINTS, DragPointsType

NODE = "Preview Drag Points"


class PreviewDragPoints(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionPreviewDragPoints",
            display_name=NODE,
            category=CATEGORY_POINTS,
            description=("Draws each handle (red, numbered) -> target (blue) arrow on the image, optionally "
                         "with the mask tinted yellow. Points placed on an image of another size are scaled."),
            inputs=[
                io.Image.Input("image", tooltip="The image to draw on (every image of the batch)."),
                DragPointsType.Input("points", tooltip="Handle -> target pairs in image pixels."),
                io.Mask.Input("mask", optional=True, tooltip="Optional editable region to tint; resized to the image if needed."),
                io.Float.Input("mask_opacity", default=0.4, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Opacity of the mask tint."),
            ],
            outputs=[io.Image.Output(display_name="image")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, points, mask=None, mask_opacity=0.4):
        points.validate(NODE, "points", require_pairs=False)
        b, h, w = image.shape[0], image.shape[1], image.shape[2]
        pts = points.scaled(w, h) if (points.width, points.height) != (w, h) else points
        if mask is not None:
            if mask.ndim == 2:
                mask = mask[None]
            if mask.ndim != 3:
                raise input_error(NODE, "mask", f"expected a MASK [batch, height, width], got shape {tuple(mask.shape)}")
            if mask.shape[-2:] != (h, w):
                mask = F.interpolate(mask[:, None].float(), size=(h, w), mode="nearest")[:, 0]
        out = []
        for i in range(b):
            rgb = _draw.to_uint8(image[i])
            if mask is not None:
                rgb = _draw.overlay_mask(rgb, mask[min(i, mask.shape[0] - 1)].cpu().numpy(), mask_opacity)
            out.append(_draw.to_image(_draw.draw_arrows(rgb, pts.pairs)))
        result = torch.stack(out)
        return io.NodeOutput(result, ui=ui.PreviewImage(result, cls=cls))


NODES = [PreviewDragPoints]
