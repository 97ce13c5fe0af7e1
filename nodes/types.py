"""The pack's custom edge types, declared once. Their payloads are the dataclasses in guidance/."""
from comfy_api.latest import io

DragPointsType = io.Custom("DRAG_POINTS")
AttnCaptureType = io.Custom("ATTN_CAPTURE")
InversionType = io.Custom("INVERSION")
ImagePromptType = io.Custom("IMAGE_PROMPT")

CATEGORY_POINTS = "DragFusion/Points"
CATEGORY_ATTENTIONDRAG = "DragFusion/AttentionDrag"
CATEGORY_VERSAFUSION = "DragFusion/VersaFusion"
