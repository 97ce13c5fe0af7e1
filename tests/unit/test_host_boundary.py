"""The pack reaches ComfyUI internals through one module (attention_patch/comfy_host.py), and the
layers import downwards only: nodes -> attention_patch -> guidance; guidance is pure torch."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_MODULE = os.path.join("attention_patch", "comfy_host.py")
# ComfyUI's own top-level modules (beyond the public comfy_api)
INTERNAL = {"comfy", "folder_paths", "node_helpers", "latent_preview", "server", "execution", "nodes",
            "comfy_execution", "comfy_extras", "comfyui_version", "app"}
LAYERS = {"nodes": 3, "attention_patch": 2, "guidance": 1}
PURE = {"torch", "numpy", "einops", "math", "dataclasses", "typing", "__future__", "functools", "itertools",
        "collections", "json", "os", "re", "hashlib", "warnings", "enum"}


def pack_files():
    out = [os.path.join(REPO, "__init__.py")]
    for layer in LAYERS:
        d = os.path.join(REPO, layer)
        out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".py")]
    return out


def imports(path):
    """(absolute top-level name or None, relative target layer or None) for every import."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    rel_dir = os.path.relpath(os.path.dirname(path), REPO)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module, None
            else:
                parts = [] if rel_dir == "." else rel_dir.split(os.sep)
                base = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                target = (base + (node.module.split(".") if node.module else []))
                yield None, target[0] if target else ""


@pytest.mark.parametrize("path", pack_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_comfy_internals_only_through_the_host_module(path):
    rel = os.path.relpath(path, REPO)
    for name, _ in imports(path):
        if name is None:
            continue
        top = name.split(".")[0]
        if rel == HOST_MODULE or name.startswith("comfy_api"):
            continue
        assert top not in INTERNAL, f"{rel} imports {name}: reach ComfyUI internals through {HOST_MODULE}"


@pytest.mark.parametrize("path", pack_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_layers_import_downwards_only(path):
    rel = os.path.relpath(path, REPO)
    layer = rel.split(os.sep)[0] if os.sep in rel else None
    for name, target in imports(path):
        if layer == "guidance" and name is not None:
            assert name.split(".")[0] in PURE, f"{rel} imports {name}: guidance/ is pure torch"
        if target is None or layer is None or target not in LAYERS:
            continue
        assert LAYERS[target] <= LAYERS[layer], f"{rel} imports up into {target}/"
        assert target != "nodes" or layer == "nodes", f"{rel} imports nodes/"


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import comfy.samplers\nfrom folder_paths import get_input_directory\n")
    names = [n for n, _ in imports(str(bad))]
    assert names == ["comfy.samplers", "folder_paths"] and all(n.split(".")[0] in INTERNAL for n in names)
