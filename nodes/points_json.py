"""Drag Points (JSON): the point JSON of the widget, parsed against an IMAGE."""
from comfy_api.latest import io

from ..guidance.drag_points import DragPoints
from .types import CATEGORY_POINTS, DragPointsType

NODE = "Drag Points (JSON)"
EXAMPLE = '{"version": 1, "width": 512, "height": 512, "pairs": [{"handle": [200, 250], "target": [260, 250]}]}'


class DragPointsJSON(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionPointsJSON",
            display_name=NODE,
            category=CATEGORY_POINTS,
            description=("Parses handle -> target pairs written as JSON "
                         '({"version": 1, "width": W, "height": H, "pairs": [{"handle": [x, y], "target": [x, y]}]}, '
                         "image pixels) and checks them against the image. If width/height are left out, "
                         "the image's size is used; if given, they must match the image."),
            inputs=[
                io.Image.Input("image", tooltip="The image the points were placed on; only its size is used."),
                io.String.Input("points_json", multiline=True, default=EXAMPLE,
                                tooltip="Point JSON in image pixels: x to the right, y down, 0 <= x < width, 0 <= y < height."),
                io.Boolean.Input("allow_empty", default=False, optional=True,
                                 tooltip="Accept an empty pair list (inpainting mode needs no pairs)."),
            ],
            outputs=[DragPointsType.Output(display_name="points")],
        )

    @classmethod
    def execute(cls, image, points_json, allow_empty=False):
        h, w = int(image.shape[1]), int(image.shape[2])
        pts = DragPoints.from_json(points_json, NODE, "points_json", width=w, height=h,
                                   require_pairs=not allow_empty)
        return io.NodeOutput(pts)


NODES = [DragPointsJSON]
