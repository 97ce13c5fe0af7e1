"""DragFusion: training-free drag editing (AttentionDrag, VersaFusion) for ComfyUI."""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes import DragFusionExtension

    return DragFusionExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
