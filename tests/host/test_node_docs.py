"""Every node of the pack has a help page where ComfyUI's node library looks for it.

Frontend 1.32.9 fetches ``/extensions/<pack>/docs/<node_id>/<locale>.md``, then
``/extensions/<pack>/docs/<node_id>.md``; with ``WEB_DIRECTORY = "./js"`` that is ``js/docs/<node_id>.md``,
and a relative image link ``img/x.png`` resolves to ``js/docs/img/x.png``. For every node class that the
real host loaded from this repository, the page must: carry the node's display name as its title; list
exactly the schema's input ids in its Inputs table (with "shown as *label*" for an input displayed under
another name, and each simple default value); list exactly the schema's outputs in its Outputs table; link a PNG that
exists in js/docs/img/; and cite the paper of its category with an equation, section, algorithm or figure
number, or say that it is a utility node. Pictures are small (MAX_IMAGE_BYTES each, MAX_TOTAL_BYTES
together) and every picture is used. Remake them with scripts/node_doc_pictures.py.
"""
import inspect
import os
import re

import harness

DOCS = os.path.join(harness.REPO, "js", "docs")
IMG = os.path.join(DOCS, "img")
MAX_IMAGE_BYTES = 80_000
MAX_TOTAL_BYTES = 1_500_000
PAPERS = {
    "AttentionDrag": "AttentionDrag: Exploiting Latent Correlation Knowledge in Pre-trained Diffusion Models for Image Editing",
    "VersaFusion": "VersaFusion: A Versatile Diffusion-Based Framework for Fine-Grained Image Editing and Enhancement",
}
UTILITY = "utility node"
PAPER_PLACE = re.compile(r"\b(Eq\.|Algorithm|Sec\.|Fig\.)\s*\d")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def pack_nodes(host) -> dict:
    """node_id -> class, for every registered class defined in a file of this repository (not of the host,
    which may live inside it at .host/)."""
    found = {}
    for node_id, cls in host.NODE_CLASS_MAPPINGS.items():
        try:
            path = inspect.getfile(cls)
        except TypeError:
            continue
        if _inside(path, harness.REPO) and not _inside(path, harness.COMFYUI_DIR):
            found[node_id] = cls
    return found


def sections(text: str) -> dict:
    """'## Title' -> the text up to the next '## ' heading."""
    out, name = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            out[name] = []
        elif name is not None:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def table_rows(section: str) -> dict:
    """Markdown table rows whose first cell starts with a `name` -> {name: the whole row}."""
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([^`]+)`", line.strip())
        if m:
            rows[m.group(1)] = line
    return rows


def simple_default(inp):
    """The default as the page should show it (`value`), or None when it is absent, empty or too long."""
    d = getattr(inp, "default", None)
    if d is None or isinstance(d, (list, dict)):
        return None
    s = str(d)
    return s if s and len(s) <= 80 and "\n" not in s else None


def page_problems(node_id: str, cls) -> list:
    path = os.path.join(DOCS, f"{node_id}.md")
    if not os.path.isfile(path):
        return [f"no help page js/docs/{node_id}.md"]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    schema = cls.GET_SCHEMA()
    bad = []
    title = text.splitlines()[0] if text else ""
    if title != f"# {schema.display_name}":
        bad.append(f"first line {title!r} is not '# {schema.display_name}' (the node's display name)")
    parts = sections(text)
    for needed in ("Inputs", "Outputs", "Paper"):
        if needed not in parts:
            bad.append(f"no '## {needed}' section")
    rows = table_rows(parts.get("Inputs", ""))
    ids = [i.id for i in schema.inputs]
    missing = [i for i in ids if i not in rows]
    extra = [r for r in rows if r not in ids]
    if missing:
        bad.append(f"inputs missing from the Inputs table: {missing}")
    if extra:
        bad.append(f"Inputs table rows for inputs the node does not have: {extra}")
    for inp in schema.inputs:
        row = rows.get(inp.id)
        if row is None:
            continue
        label = getattr(inp, "display_name", None)
        if label and label != inp.id and f"shown as *{label}*" not in row:
            bad.append(f"input {inp.id!r} is shown as {label!r}; its row does not say so ('shown as *{label}*')")
        d = simple_default(inp)
        if d is not None and f"`{d}`" not in row:
            bad.append(f"input {inp.id!r}: its row does not give the default `{d}`")
    out_rows = table_rows(parts.get("Outputs", ""))
    names = [o.display_name or o.io_type for o in schema.outputs]
    if sorted(out_rows) != sorted(names):
        bad.append(f"Outputs table names {sorted(out_rows)}, the node's outputs are {sorted(names)}")
    links = IMAGE_LINK.findall(text)
    if not links:
        bad.append("links no picture (![...](img/<name>.png))")
    for href in links:
        if href.startswith(("/", "http:", "https:")) or ".." in href.split("/") or not href.startswith("img/"):
            bad.append(f"picture link {href!r} must be relative, under img/ (the frontend prefixes the docs URL)")
            continue
        target = os.path.join(DOCS, *href.split("/"))
        if not os.path.isfile(target):
            bad.append(f"picture {href!r} does not exist in js/docs/img/")
    paper = " ".join(parts.get("Paper", "").split())   # markdown joins wrapped lines
    if UTILITY not in paper:
        area = schema.category.split("/")[-1]
        wanted = [PAPERS[area]] if area in PAPERS else list(PAPERS.values())
        if not any(t in paper for t in wanted):
            bad.append(f"the Paper section neither cites {' or '.join(wanted)!r} nor says it is a {UTILITY}")
        if not PAPER_PLACE.search(paper):
            bad.append("the Paper section names no equation, section, algorithm or figure (e.g. 'Eq. 12')")
    return bad


def test_pack_nodes_are_found(host):
    found = pack_nodes(host)
    assert found, "no node class of this repository is registered in the host"
    missing = set(harness.pack_node_ids(host)) - set(found)
    assert not missing, f"DragFusion nodes whose class was not traced back to this repository: {sorted(missing)}"


def test_every_pack_node_has_a_complete_help_page(host):
    problems = {nid: p for nid, cls in sorted(pack_nodes(host).items()) if (p := page_problems(nid, cls))}
    report = "\n".join(f"{nid}:\n  " + "\n  ".join(p) for nid, p in problems.items())
    assert not problems, f"help pages in js/docs/ are missing or out of date:\n{report}"


def test_no_page_for_a_node_that_does_not_exist(host):
    ids = set(pack_nodes(host))
    stale = [f for f in os.listdir(DOCS) if f.endswith(".md") and f[:-3] not in ids]
    stale += [d for d in os.listdir(DOCS) if os.path.isdir(os.path.join(DOCS, d)) and d != "img" and d not in ids]
    assert not stale, f"js/docs/ has pages for nodes the pack does not register: {stale}"


def test_pictures_are_small_pngs_and_all_used():
    pictures = sorted(f for f in os.listdir(IMG) if not f.startswith("."))
    assert pictures, "js/docs/img/ is empty"
    used = set()
    for f in os.listdir(DOCS):
        if f.endswith(".md"):
            with open(os.path.join(DOCS, f), encoding="utf-8") as fh:
                used.update(h.split("/", 1)[1] for h in IMAGE_LINK.findall(fh.read()) if h.startswith("img/"))
    total = 0
    for name in pictures:
        path = os.path.join(IMG, name)
        size = os.path.getsize(path)
        total += size
        with open(path, "rb") as fh:
            assert fh.read(8) == PNG_MAGIC, f"{name} is not a PNG"
        assert size <= MAX_IMAGE_BYTES, f"{name} is {size} bytes (> {MAX_IMAGE_BYTES}); rerun scripts/node_doc_pictures.py"
        assert name in used, f"js/docs/img/{name} is linked by no help page"
    assert total <= MAX_TOTAL_BYTES, f"the pictures take {total} bytes together (> {MAX_TOTAL_BYTES})"
