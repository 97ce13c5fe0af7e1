"""The help pages over HTTP, as frontend 1.32.9 fetches them from a real server.

The frontend derives the pack from the node's ``python_module`` (``custom_nodes.<pack>``), fetches
``/extensions/<pack>/docs/<node_id>/<locale>.md`` and then ``/extensions/<pack>/docs/<node_id>.md``, and
prefixes a relative picture link with ``/extensions/<pack>/docs/``.
"""
import os
import re
import urllib.error
import urllib.request

import pytest

import harness

DOCS = os.path.join(harness.REPO, "js", "docs")
NODES = ("DragFusionAutoMask", "DragFusionDragPoints")


def fetch(server, path: str):
    try:
        with urllib.request.urlopen(server.url + path, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


@pytest.mark.parametrize("node_id", NODES)
def test_help_page_and_its_picture_are_served(server, node_id):
    info = server.get(f"/object_info/{node_id}")[node_id]
    module = info["python_module"].split(".")
    assert module[0] == "custom_nodes" and len(module) >= 2, info["python_module"]
    base = f"/extensions/{module[1].split('@')[0]}/docs/"
    assert base == "/extensions/dragfusion/docs/", f"the frontend would look for the page under {base}"

    status, _, body = fetch(server, f"{base}{node_id}.md")
    assert status == 200, f"GET {base}{node_id}.md -> {status}"
    with open(os.path.join(DOCS, f"{node_id}.md"), "rb") as f:
        assert body == f.read()

    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", body.decode("utf-8"))
    assert links, f"{node_id}.md links no picture"
    for href in links:
        status, ctype, png = fetch(server, base + href)
        assert status == 200, f"GET {base}{href} -> {status}"
        assert ctype.startswith("image/png"), f"{base}{href} served as {ctype!r}"
        with open(os.path.join(DOCS, *href.split("/")), "rb") as f:
            assert png == f.read()
