"""The Drag Points canvas widget in the real frontend (host 1.32.9 and 1.58.1; classic and Vue node modes),
driven with real mouse and keyboard events in headless Chromium."""
import io
import itertools
import json
import urllib.parse

import numpy as np
from PIL import Image

from conftest import SAMPLE_NAME, save_screenshot

NODE = "DragFusionDragPoints"
RUNS = itertools.count(1)
IW = IH = 512  # the DragBench sample's size


def add_canvas_node(pg, pos=(100, 100), size=None, image=SAMPLE_NAME):
    nid = pg.add_node(NODE, pos, size)
    pg.set_widget(nid, "image", image)
    pg.make_visible(nid)
    pg.wait_image(nid)
    pg.page.wait_for_timeout(150)
    return nid


def pairs_of(pg, nid):
    data = pg.points(nid)
    assert (data["version"], data["width"], data["height"]) == (1, IW, IH), data
    return [(tuple(p["handle"]), tuple(p["target"])) for p in data["pairs"]]


def assert_pairs(got, want, tol=1):
    assert len(got) == len(want), (got, want)
    for (gh, gt), (wh, wt) in zip(got, want):
        for g, w in ((gh, wh), (gt, wt)):
            assert abs(g[0] - w[0]) <= tol and abs(g[1] - w[1]) <= tol, (got, want)


def canvas_width(pg, nid):
    return pg.js("(id) => window.app.graph.getNodeById(id).dragfusion.canvas.getBoundingClientRect().width", nid)


def resize_and_zoom(pg, nid, size, scale):
    pg.js("""([id, size, scale]) => { const app = window.app, n = app.graph.getNodeById(id);
        n.setSize(size); app.canvas.ds.scale = scale;
        app.canvas.ds.offset[0] = -n.pos[0] + 250 / scale; app.canvas.ds.offset[1] = -n.pos[1] + 100 / scale;
        app.canvas.setDirty(true, true); }""", [nid, list(size), scale])
    pg.page.wait_for_timeout(500)


def test_extension_loaded(ui):
    names = ui.js("() => window.app.extensions.map(e => e.name)")
    assert "DragFusion.DragPoints" in names
    listed = ui.env.fs.server.get("/extensions")
    assert any(u.endswith("/drag_points.js") for u in listed), listed


def test_clicks_give_image_pixels_at_two_node_sizes(page_):
    pg = page_
    nid = add_canvas_node(pg)
    w1 = canvas_width(pg, nid)
    want = [((331, 179), (217, 177))]
    pg.click_image(nid, 331, 179)
    pg.click_image(nid, 217, 177)
    assert_pairs(pairs_of(pg, nid), want, tol=0)

    resize_and_zoom(pg, nid, (600, 540), 1.2)
    w2 = canvas_width(pg, nid)
    save_screenshot(pg, f"drag_points-resized-{pg.label}")
    assert abs(w2 - w1) > 40, f"the canvas did not change size on screen ({w1} -> {w2})"
    want.append(((20, 480), (500, 30)))
    pg.click_image(nid, 20, 480)
    pg.click_image(nid, 500, 30)
    assert_pairs(pairs_of(pg, nid), want, tol=0)
    save_screenshot(pg, f"drag_points-{pg.label}")


def test_drag_moves_a_point(page_):
    pg = page_
    nid = add_canvas_node(pg)
    pg.click_image(nid, 100, 100)
    pg.click_image(nid, 200, 120)
    x0, y0 = pg.image_to_client(nid, 200, 120)
    x1, y1 = pg.image_to_client(nid, 260, 300)
    m = pg.page.mouse
    m.move(x0, y0)
    m.down()
    m.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    m.move(x1, y1, steps=4)
    m.up()
    assert_pairs(pairs_of(pg, nid), [((100, 100), (260, 300))])
    # and the handle
    hx, hy = pg.image_to_client(nid, 100, 100)
    tx, ty = pg.image_to_client(nid, 50, 400)
    m.move(hx, hy)
    m.down()
    m.move(tx, ty, steps=6)
    m.up()
    assert_pairs(pairs_of(pg, nid), [((50, 400), (260, 300))])


def test_right_click_delete_key_and_clear(page_):
    pg = page_
    nid = add_canvas_node(pg)
    want = [((50, 50), (90, 60)), ((200, 200), (240, 260)), ((400, 100), (420, 150))]
    for h, t in want:
        pg.click_image(nid, *h)
        pg.click_image(nid, *t)
    assert_pairs(pairs_of(pg, nid), want, tol=0)

    pg.click_image(nid, 240, 260, button="right")          # the target of pair 2
    assert_pairs(pairs_of(pg, nid), [want[0], want[2]], tol=0)
    assert pg.js("() => document.querySelectorAll('.litecontextmenu, .p-contextmenu[style*=\"display: block\"]').length") == 0

    x, y = pg.image_to_client(nid, 400, 100)                # hover pair 3's handle, press Delete
    pg.page.mouse.move(x, y)
    pg.page.mouse.move(x + 1, y)
    pg.page.keyboard.press("Delete")
    assert_pairs(pairs_of(pg, nid), [want[0]], tol=0)
    assert pg.js("(id) => !!window.app.graph.getNodeById(id)", nid), "Delete removed the node, not the pair"

    pg.page.locator("button", has_text="Clear points").first.click()
    assert pairs_of(pg, nid) == []


def paint_stroke(pg, nid, a, b, steps=12):
    pg.page.locator("button", has_text="Mask").first.click()
    pg.drag_image(nid, a, b, steps)
    pg.page.wait_for_function("(id) => { const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === 'mask');"
                              " return w.value && w.value.startsWith('dragfusion_masks/'); }", arg=nid, timeout=15000)
    pg.page.locator("button", has_text="Points").first.click()


def view_png(fs, info) -> np.ndarray:
    q = urllib.parse.urlencode({"filename": info["filename"], "subfolder": info.get("subfolder", ""), "type": info["type"]})
    with urllib.request.urlopen(f"{fs.url}/view?{q}", timeout=30) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("L"))


import urllib.request  # noqa: E402


def test_points_and_mask_reach_the_node_and_survive_reload(page_):
    pg = page_
    fs = pg.env.fs
    nid = add_canvas_node(pg, pos=(100, 100))
    k = 7 * next(RUNS)  # differ per frontend/mode: the server is shared and its cache must not answer
    want = [((331, 179), (217, 177)), ((300, 400), (330 + k, 420))]
    for h, t in want:
        pg.click_image(nid, *h)
        pg.click_image(nid, *t)
    paint_stroke(pg, nid, (150, 300), (350, 300))
    mask_name = pg.widget(nid, "mask")
    assert mask_name.startswith("dragfusion_masks/mask_"), mask_name

    # Downstream: MASK -> image -> PreviewImage (the mask as the node produced it); points -> preview.
    to_img = pg.add_node("MaskToImage", (620, 100))
    prev = pg.add_node("PreviewImage", (900, 100))
    arrows = pg.add_node("DragFusionPreviewDragPoints", (620, 400))
    pg.connect(nid, 2, to_img, 0)
    pg.connect(to_img, 0, prev, 0)
    pg.connect(nid, 0, arrows, 0)
    pg.connect(nid, 1, arrows, 1)
    pg.connect(nid, 2, arrows, 2)
    pg.make_visible(nid)

    pid = pg.queue()
    hist = fs.server.wait(pid, timeout=120)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:3000]
    got = hist["outputs"][str(nid)]["drag_points"][0]
    assert (got["width"], got["height"]) == (IW, IH)
    assert_pairs([(tuple(p["handle"]), tuple(p["target"])) for p in got["pairs"]], want, tol=1)
    area = hist["outputs"][str(nid)]["mask_area"][0]
    mask = view_png(fs, hist["outputs"][str(prev)]["images"][0]) > 127
    assert mask.shape == (IH, IW)
    assert int(mask.sum()) == area > 0
    for x in range(150, 351, 25):                      # along the stroke (radius 16)
        assert mask[300, x] and mask[292, x] and mask[308, x], x
    assert not mask[250, 250] and not mask[350, 250] and not mask[300, 100] and not mask[300, 400]

    # The overlay of the downstream preview appears on the canvas.
    pg.page.wait_for_function("(id) => !!window.app.graph.getNodeById(id).dragfusion.overlay", arg=nid, timeout=15000)
    save_screenshot(pg, f"drag_points-run-{pg.label}")

    # Save / load the workflow: points and mask come back into the widget.
    pg.js("""() => { window.__dfSaved = JSON.stringify(window.app.graph.serialize()); }""")
    pg.clear_graph()
    pg.js("async () => { await window.app.loadGraphData(JSON.parse(window.__dfSaved)); }")
    check_restored(pg, nid, want, mask_name)

    # Browser reload: the frontend restores the open workflow.
    pg.js("() => window.app.graph.setDirtyCanvas(true, true)")
    pg.page.wait_for_timeout(1200)  # the change tracker stores the workflow for reload
    pg.page.reload(wait_until="domcontentloaded")
    pg.wait_ready()
    check_restored(pg, nid, want, mask_name)


def check_restored(pg, nid, want, mask_name):
    pg.page.wait_for_function("(id) => { const n = window.app.graph.getNodeById(id); return n && n.dragfusion"
                              " && n.dragfusion.img && n.dragfusion.mask; }", arg=nid, timeout=30000)
    assert pg.widget(nid, "mask") == mask_name
    assert_pairs(pairs_of(pg, nid), want, tol=1)
    state = pg.js("""(id) => { const d = window.app.graph.getNodeById(id).dragfusion;
        const m = d.mask, a = m.getContext('2d').getImageData(0, 0, m.width, m.height).data;
        const at = (x, y) => a[(y * m.width + x) * 4 + 3];
        return {pairs: d.pairs.length, w: m.width, h: m.height, on: at(250, 300), off: at(250, 200)}; }""", nid)
    assert state == {"pairs": len(want), "w": IW, "h": IH, "on": 255, "off": 0}, state
