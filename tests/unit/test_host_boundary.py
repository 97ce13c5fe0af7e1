"""The pack reaches ComfyUI internals through one module (attention_patch/comfy_host.py), and the
layers import downwards only: nodes -> sampling -> attention_patch -> guidance; guidance is pure torch;
no module of the pack imports itself back, directly or through others (lazy imports inside functions count)."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST_MODULE = os.path.join("attention_patch", "comfy_host.py")
# ComfyUI's own top-level modules (beyond the public comfy_api)
INTERNAL = {"comfy", "folder_paths", "node_helpers", "latent_preview", "server", "execution", "nodes",
            "comfy_execution", "comfy_extras", "comfyui_version", "app"}
LAYERS = {"nodes": 4, "sampling": 3, "attention_patch": 2, "guidance": 1}
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


def module_of(path) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def pack_import_graph(files) -> dict:
    """module -> the pack modules it imports (relative imports, at any depth of the file: lazy ones too)."""
    known = {module_of(f) for f in files}
    graph = {}
    for path in files:
        mod = module_of(path)
        pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            parts = pkg.split(".") if pkg else []
            base = parts[:len(parts) - (node.level - 1)]
            target = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:          # "from . import comfy_host": the submodule itself
                sub = f"{target}.{alias.name}" if target else alias.name
                edges.add(sub if sub in known else target)
        graph[mod] = {e for e in edges if e in known and e != mod}
    return graph


def import_cycles(graph: dict) -> list:
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_no_import_circles():
    files = [f for f in pack_files() if not f.endswith(os.path.join(os.sep, "__init__.py")) or os.path.dirname(f) != REPO]
    assert import_cycles(pack_import_graph(files)) == []


def test_the_circle_check_can_fail(tmp_path):
    pkg = tmp_path / "guidance"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from .a import f\n")
    global REPO
    saved, REPO = REPO, str(tmp_path)
    try:
        graph = pack_import_graph([str(pkg / "a.py"), str(pkg / "b.py")])
    finally:
        REPO = saved
    assert graph == {"guidance.a": {"guidance.b"}, "guidance.b": {"guidance.a"}}
    assert import_cycles(graph) == [["guidance.a", "guidance.b", "guidance.a"]]
