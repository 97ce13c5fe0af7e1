"""Example workflows: the UI-format files in example_workflows/ and their API form.

The UI format is what ComfyUI's template browser loads; the API form is what POST /prompt takes.
Both directions use the host's /object_info (the widget order of each node), so a workflow is
written once, as a small spec, and checked against the real host.

    python scripts/workflows.py --write          # regenerate example_workflows/*.json (in-process host)
"""
from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW_DIR = os.path.join(REPO, "example_workflows")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SKIP_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def _input_specs(info: dict):
    """[(name, type, options)] in the order the frontend builds widgets and sockets."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            typ, opts = spec[0], dict((spec[1] if len(spec) > 1 else {}) or {})
            if isinstance(typ, list):
                typ, opts["options"] = "COMBO", typ
            out.append((name, typ, opts))
    return out


def _is_widget(typ: str, opts: dict) -> bool:
    return typ in WIDGET_TYPES and not opts.get("forceInput")


def _has_control(name: str, typ: str, opts: dict) -> bool:
    return typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed"))


def build_ui(spec: list, object_info: dict, notes: list | None = None) -> dict:
    """spec: [{"id", "type", "pos", "widgets": {name: value}, "links": {input: [src_id, src_slot]}, "title"?}]."""
    nodes, links = [], []
    by_id = {n["id"]: n for n in spec}
    out_links = {}
    link_id = 0
    for n in spec:
        for name, (src, slot) in n.get("links", {}).items():
            link_id += 1
            info = object_info[by_id[src]["type"]]
            links.append([link_id, src, slot, n["id"], name, info["output"][slot]])
            out_links.setdefault((src, slot), []).append(link_id)
    for order, n in enumerate(spec):
        info = object_info[n["type"]]
        inputs, widgets = [], []
        link_by_name = {l[4]: l for l in links if l[3] == n["id"]}
        for name, typ, opts in _input_specs(info):
            if _is_widget(typ, opts):
                fallback = (opts.get("options") or [None])[0] if typ == "COMBO" else None
                widgets.append(n.get("widgets", {}).get(name, opts.get("default", fallback)))
                if _has_control(name, typ, opts):
                    widgets.append("fixed")
                if name in link_by_name:
                    inputs.append({"name": name, "type": typ, "widget": {"name": name}, "link": link_by_name[name][0]})
            else:
                inputs.append({"name": name, "type": typ, "link": link_by_name[name][0] if name in link_by_name else None})
        for l in links:
            if l[3] == n["id"]:
                l[4] = next(i for i, x in enumerate(inputs) if x["name"] == l[4])
        outputs = [{"name": oname, "type": otype, "links": out_links.get((n["id"], i), []), "slot_index": i}
                   for i, (oname, otype) in enumerate(zip(info["output_name"], info["output"]))]
        node = {"id": n["id"], "type": n["type"], "pos": n.get("pos", [100 + 350 * order, 100]),
                "size": n.get("size", [320, 120 + 26 * len(widgets)]), "flags": {}, "order": order, "mode": n.get("mode", 0),
                "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": n["type"]},
                "widgets_values": widgets}
        if "title" in n:
            node["title"] = n["title"]
        nodes.append(node)
    next_id = max(n["id"] for n in spec) + 1
    for i, text in enumerate(notes or []):
        nodes.append({"id": next_id + i, "type": "Note", "pos": [100, -220 + 0 * i], "size": [600, 160], "flags": {},
                      "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                      "properties": {}, "widgets_values": [text]})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id, "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


BYPASS, MUTED = 4, 2


def _source(by_id: dict, link_src: dict, src: int, slot: int):
    """Where a link from output ``slot`` of node ``src`` really comes from: through bypassed nodes
    (mode 4), which hand their first input of the output's type on, as the frontend does; None when a
    bypassed node has no such input linked. ``by_id``: the UI's nodes by id."""
    seen = set()
    while by_id[src].get("mode", 0) == BYPASS and src not in seen:
        seen.add(src)
        node = by_id[src]
        typ = node["outputs"][slot]["type"]
        link = next((i.get("link") for i in node.get("inputs", []) if i.get("type") == typ and i.get("link") is not None), None)
        if link is None:
            return None
        src, slot = link_src[link]
    return src, slot


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API-format prompt the frontend would queue for this UI workflow (muted and bypassed nodes
    left out, links through a bypassed node taken from its input of the same type)."""
    link_src = {l[0]: (l[1], l[2]) for l in ui["links"]}
    by_id = {n["id"]: n for n in ui["nodes"]}
    prompt = {}
    for n in ui["nodes"]:
        if n["type"] in SKIP_TYPES or n.get("mode", 0) in (MUTED, BYPASS):
            continue
        info = object_info[n["type"]]
        linked = {i["name"]: i.get("link") for i in n.get("inputs", []) if i.get("link") is not None}
        values = list(n.get("widgets_values") or [])
        inputs = {}
        for name, typ, opts in _input_specs(info):
            if _is_widget(typ, opts):
                if values:
                    inputs[name] = values.pop(0)
                if _has_control(name, typ, opts) and values and values[0] in ("fixed", "increment", "decrement", "randomize"):
                    values.pop(0)
            if name in linked:
                found = _source(by_id, link_src, *link_src[linked[name]])
                if found is not None:
                    inputs[name] = [str(found[0]), found[1]]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def load(name: str) -> dict:
    with open(os.path.join(WORKFLOW_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def object_info_in_process() -> dict:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import harness
    nodes = harness.load_host()
    info = {}
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        if hasattr(cls, "GET_NODE_INFO_V1"):
            info[name] = cls.GET_NODE_INFO_V1()
        else:
            inputs = cls.INPUT_TYPES()
            info[name] = {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
                          "output": list(cls.RETURN_TYPES),
                          "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES)}
    return json.loads(json.dumps(info, default=str))


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate example_workflows/*.json")
    a = ap.parse_args()
    if not a.write:
        ap.print_help()
        return
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from workflow_specs import SPECS
    info = object_info_in_process()
    for fname, (spec, notes) in SPECS.items():
        ui = build_ui(spec, info, notes)
        with open(os.path.join(WORKFLOW_DIR, fname), "w", encoding="utf-8") as f:
            json.dump(ui, f, indent=1)
            f.write("\n")
        print("wrote", fname)


if __name__ == "__main__":
    main()
