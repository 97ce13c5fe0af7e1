"""Thin V3 node classes. Every module here lists its nodes in a module-level ``NODES``."""
import importlib
import pkgutil

from comfy_api.latest import ComfyExtension, io


def all_nodes() -> list[type[io.ComfyNode]]:
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "NODES", []))
    return found


class DragFusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
